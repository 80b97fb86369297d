"""The Slicer side of GloResNet: everything the two Slicer modules (GloResNet, GloResNetTraining) do besides
wiring their GUI, one concern per file. It is the only part of GloResNetLib that imports ``slicer``, ``vtk``,
``qt`` or ``ctk`` (Testing/test_architecture.py); the core below it never imports it.

::

    GloResNet.py, GloResNetTraining.py        thin module files: Module, ParameterNode, Widget, Logic, Test
      |  Logic = predict_logic.PredictionLogic / training_logic.TrainingLogic + ScriptedLoadableModuleLogic
      |  Widget = common.ModuleWidgetHelpers + predict_gui / training_gui helpers
      v
    MRML (slicer, vtk; no Qt)       scene, volumes, display, tables, results, scene_dataset, training_monitor
    jobs (no slicer, no Qt)         command -> background (BackgroundProcess) -> jobs.Job
                                    -> prediction_job.PredictionJob, training_jobs.DatasetCheck / TrainingJob
                                    diagnosis, bundles, requirements, devices, files, training_params
    shared by both modules          common, dependencies, views, paths, selftest
      |
      v
    core: gloresnet command line (cli, training), bundle_meta, progress_events, disclaimer, errors ...

The job modules run here without Slicer; the MRML modules run with slicer-core's MRML nodes (the PyPI package)
and are tested that way (Testing/test_mrml.py, test_training_module.py, test_slicer_side.py). Qt (``qt``,
``ctk``) is imported only inside the functions of ``common``, ``predict_gui``, ``training_gui`` and
``selftest`` that touch widgets. Nothing imports torch at import time: prediction in Slicer's own Python
(:func:`.results.predict_nodes`) and the self-test's tiny bundle import it when they run.
"""
