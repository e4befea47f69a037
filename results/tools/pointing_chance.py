"""The pointing game's chance level on an evaluation set: a patch drawn uniformly from the grid,
per (image, class) trial, the share of patch centres inside the class's boxes (as pointing_hit
maps them), averaged over trials. Also the 'always the centre patch' and best-fixed-patch levels."""
import sys
from pathlib import Path
import numpy as np, pandas as pd, pydicom
from offclip.models.evaluate import Geometry, patch_centre

root = Path(sys.argv[1]); grids = [int(g) for g in sys.argv[2:]] or [3, 6]
ann = pd.read_csv(root / "annotations" / "annotations_test.csv").dropna(subset=["x_min"])
ann = ann[ann["class_name"] != "No finding"]
dims = {}
for image_id in ann["image_id"].unique():
    ds = pydicom.dcmread(root / "test" / f"{image_id}.dicom", stop_before_pixels=True)
    dims[image_id] = (int(ds.Rows), int(ds.Columns))
for g in grids:
    per_patch = []  # trials x patches hit matrix
    for (image_id, cls), group in ann.groupby(["image_id", "class_name"]):
        geom = Geometry.of(dims[image_id], dims[image_id], 96 * g // 3)
        b = group[["x_min", "y_min", "x_max", "y_max"]].to_numpy(float)
        row = []
        for r in range(g):
            for c in range(g):
                x, y = patch_centre(r, c, (g, g), geom)
                row.append(bool(((b[:, 0] <= x) & (x <= b[:, 2]) & (b[:, 1] <= y) & (y <= b[:, 3])).any()))
        per_patch.append(row)
    m = np.array(per_patch, float)
    print(f"grid {g}x{g}: {len(m)} trials; random patch {m.mean():.3f}; best fixed patch {m.mean(0).max():.3f}")
