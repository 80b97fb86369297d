"""The baseline of ``bench_predict.py``: the straightforward MONAI predict pipeline, stage by stage, timed
(``Orientation("RAS")`` -> ``Resize`` -> ``NormalizeIntensity``, eager forward per TTA view, MONAI's
``GradCAM`` on ``layer4`` brought back onto the input grid with ``inverse``, ``nibabel.save``)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from ceiling import sync


class MonaiBaseline:
    """The straightforward MONAI pipeline, stage by stage (model shared with ours)."""

    def __init__(
        self,
        model: torch.nn.Module,
        device: torch.device,
        views: list[tuple[int, ...]],
        mode: str = "trilinear",
        size=(128, 128, 128),
    ) -> None:
        from monai.transforms import Compose, LoadImage, NormalizeIntensity, Orientation, Resize
        from monai.visualize import GradCAM

        self.model, self.device, self.views = model, device, views
        self.loader = LoadImage(image_only=True, ensure_channel_first=True)
        self.pre = Compose([Orientation(axcodes="RAS"), Resize(tuple(size), mode=mode), NormalizeIntensity()])
        # identity postprocessing: MONAI's default normaliser inverts the map
        self.gradcam = GradCAM(nn_module=model, target_layers="layer4", postprocessing=lambda m: m)

    def run(self, src, out_dir: Path | None = None) -> tuple[dict, dict]:
        """src: a path (load stage timed) or an (array, affine) pair. Returns (timings, outputs)."""
        from monai.data import MetaTensor

        t, dev = {}, self.device
        t0 = time.perf_counter()
        if isinstance(src, (str, Path)):
            img = self.loader(str(src))
            t["load"] = time.perf_counter() - t0
            t0 = time.perf_counter()
        else:  # in memory: the array as handed over (the MetaTensor wrapping is timed as preprocessing)
            img = MetaTensor(torch.from_numpy(src[0])[None], affine=torch.from_numpy(src[1]))
        x = self.pre(img)
        xb = x.as_tensor()[None].to(dev)
        sync(dev)
        t["preprocess"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        probs = []
        with torch.no_grad():
            for v in self.views:
                xv = xb.flip([2 + a for a in v]) if v else xb
                probs.append(torch.softmax(self.model(xv), 1)[0, 1])
        probs = torch.stack(probs).cpu().numpy()
        t["network"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        cam = self.gradcam(xb, class_idx=1)[0].detach()  # (1, X, Y, Z), ReLU'd, upsampled
        cam = cam / cam.max() if float(cam.max()) > 0 else cam
        cam_meta = MetaTensor(cam.cpu(), affine=x.affine, applied_operations=list(x.applied_operations))
        cam_input = self.pre.inverse(cam_meta)[0].numpy()
        t["cam"] = time.perf_counter() - t0
        if out_dir is not None:
            import nibabel as nib

            t0 = time.perf_counter()
            nib.save(nib.Nifti1Image(cam_input, img.affine.numpy()), str(out_dir / "base_cam.nii.gz"))
            nib.save(nib.Nifti1Image(x[0].numpy(), x.affine.numpy()), str(out_dir / "base_resampled.nii.gz"))
            (out_dir / "base.json").write_text(json.dumps({"probability": float(probs.mean())}))
            t["write"] = time.perf_counter() - t0
        outputs = {
            "probability": float(probs.mean()),
            "view_probabilities": probs,
            "input": x[0].numpy(),
            "cam_network": cam[0].cpu().numpy(),
            "cam": cam_input,
        }
        return t, outputs
