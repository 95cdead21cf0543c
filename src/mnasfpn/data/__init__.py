"""Detection data: COCO-format folders, the tf.data pipeline, splits, a synthetic set.

Folder layout (what `mnasfpn data synth` writes and real COCO 2017 already is)::

    DIR/annotations/instances_{split}.json      COCO "instances" file
    DIR/{split}/...                             its images; file_name is relative to here

`load_coco(DIR, split) -> CocoSet` reads and checks one split with no TensorFlow: images
(id, path, width, height), per-image annotations (COCO x,y,w,h pixel boxes, category ids,
iscrowd), categories [(id, name)], `class_index` (COCO id ↔ contiguous 0..K-1, in ascending
id order), `skipped` (counts of annotations left out, by reason) and `ground_truth()` (the
COCO document for pycocotools, skipped annotations left out). Bad input raises a one-line
`DataError` before any training.

`make_dataset(coco, input_size S, batch_size B, *, training, seed=0, max_boxes=100)` yields
dicts of batched tensors:

    image      float32 [B, S, S, 3]  RGB 0..255 (not normalized: the model's first op does
                                     2/255·x − 1). Resized keeping the aspect ratio so the
                                     longer side is S, padded bottom/right with 0.
    boxes      float32 [B, M, 4]     [ymin, xmin, ymax, xmax] normalized by S, i.e. in the
                                     padded S×S frame; padding rows are 0.
    classes    int32   [B, M]        contiguous class index 0..K-1; −1 marks padding.
    num_boxes  int32   [B]           real rows in boxes / classes (M = max_boxes).
    image_id   int64   [B]           COCO image id.
    scale      float32 [B]           input pixels per original pixel: a detection box in
                                     input pixels / scale = original pixels (COCO eval).

Crowd annotations are not in `boxes` (COCO eval reads them from the annotation file).
Training: shuffled with `seed` (every pass in a new order), repeated without end, random
scale jitter (longer side S·U(0.6, 1.4)) with a random S×S window, random horizontal flip;
boxes follow the image, ones mostly cut away are dropped; batches drop the remainder, so
shapes are static. Deterministic for a seed. Eval: no augmentation, one pass, in file order,
the last batch may be smaller. Both prefetch.

`split_coco` carves a search-train / search-val pair out of one training split (the paper:
COCO train2017 → 111k / 7k). `write_synthetic` (`mnasfpn data synth`) makes a shapes set.
"""

from mnasfpn.data.coco import (
    ClassIndex,
    CocoSet,
    DataError,
    DataWarning,
    ImageAnnotations,
    ImageRecord,
    load_coco,
)
from mnasfpn.data.pipeline import make_dataset
from mnasfpn.data.split import split_coco
from mnasfpn.data.synth import SynthSpec, write_synthetic

__all__ = [
    "ClassIndex",
    "CocoSet",
    "DataError",
    "DataWarning",
    "ImageAnnotations",
    "ImageRecord",
    "SynthSpec",
    "load_coco",
    "make_dataset",
    "split_coco",
    "write_synthetic",
]
