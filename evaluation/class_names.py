"""Class lists, text-prompt names and background thresholds of the zero-shot benchmarks.

Index ``i`` of ``class_names`` is label value ``i`` in the ground-truth maps read by
:mod:`evaluation.datasets`; ``prompt_names[i]`` is the word put into the text prompts for that class
(GroupViT renames a few PASCAL names that are not natural English, e.g. ``pottedplant`` -> ``plant``).
Index 0 is always ``background``: GroupViT never embeds a prompt for it; a pixel becomes background when
its best foreground similarity is below ``background_threshold``.

Two thresholds are kept per dataset: ``background_threshold`` is the value in the released GroupViT
evaluation configs (what reproduces the released checkpoints' numbers); ``paper_background_threshold`` is
the value quoted in the paper, where it differs or is given (``None`` when the paper quotes none).
"""

from __future__ import annotations

import dataclasses
from typing import Optional

__all__ = [
    "VOC_CLASSES",
    "VOC_PROMPT_NAMES",
    "CONTEXT_CLASSES",
    "CONTEXT_PROMPT_NAMES",
    "COCO_OBJECT_CLASSES",
    "COCO_OBJECT_PROMPT_NAMES",
    "COCO_THING_CATEGORY_IDS",
    "DatasetSpec",
    "get_spec",
    "available_datasets",
]

# PASCAL VOC 2012: background + 20 classes, in the order of the palette indices of SegmentationClass.
VOC_CLASSES: tuple[str, ...] = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
)

_VOC_RENAMES = {"diningtable": "table", "pottedplant": "plant", "tvmonitor": "monitor"}
VOC_PROMPT_NAMES: tuple[str, ...] = tuple(_VOC_RENAMES.get(n, n) for n in VOC_CLASSES)

# PASCAL Context, 60-class setting (background + the 59 most frequent classes), in the alphabetical order
# of mmsegmentation's PascalContextDataset, which is also the label order written by its converter
# (0 = background, 1..59 = classes; reduce_zero_label is off for this 60-class variant).
CONTEXT_CLASSES: tuple[str, ...] = (
    "background", "aeroplane", "bag", "bed", "bedclothes", "bench", "bicycle", "bird", "boat", "book",
    "bottle", "building", "bus", "cabinet", "car", "cat", "ceiling", "chair", "cloth", "computer", "cow",
    "cup", "curtain", "dog", "door", "fence", "floor", "flower", "food", "grass", "ground", "horse",
    "keyboard", "light", "motorbike", "mountain", "mouse", "person", "plate", "platform", "pottedplant",
    "road", "rock", "sheep", "shelves", "sidewalk", "sign", "sky", "snow", "sofa", "table", "track",
    "train", "tree", "truck", "tvmonitor", "wall", "water", "window", "wood",
)

# GroupViT's prompt words for Context differ from mmseg's names in three places.
_CONTEXT_RENAMES = {"aeroplane": "airplane", "pottedplant": "plant", "tvmonitor": "monitor"}
CONTEXT_PROMPT_NAMES: tuple[str, ...] = tuple(_CONTEXT_RENAMES.get(n, n) for n in CONTEXT_CLASSES)

# COCO-Object: background + the 80 COCO thing classes in ascending COCO category-id order (the order of
# mmseg-style COCOObjectDataset). Stuff classes and unlabeled pixels are background.
COCO_OBJECT_CLASSES: tuple[str, ...] = (
    "background", "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse",
    "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie",
    "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove",
    "skateboard", "surfboard", "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon",
    "bowl", "banana", "apple", "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut",
    "cake", "chair", "couch", "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse",
    "remote", "keyboard", "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book",
    "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush",
)
COCO_OBJECT_PROMPT_NAMES: tuple[str, ...] = COCO_OBJECT_CLASSES

# The COCO category ids of the 80 thing classes (ids 1..90 with 10 unused), aligned with
# COCO_OBJECT_CLASSES[1:]: label value i (1..80) is category COCO_THING_CATEGORY_IDS[i - 1].
_UNUSED_COCO_IDS = (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)
COCO_THING_CATEGORY_IDS: tuple[int, ...] = tuple(i for i in range(1, 91) if i not in _UNUSED_COCO_IDS)


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """Static description of one evaluation dataset.

    Attributes:
      name: canonical dataset name (``voc``, ``context``, ``coco_object``).
      class_names: ``C`` names; index ``i`` is label value ``i`` (0 = background).
      prompt_names: ``C`` words used to build text prompts (index-aligned with ``class_names``).
      background_threshold: released-config threshold on the foreground similarity below which a pixel
        is predicted background.
      paper_background_threshold: the paper's quoted threshold, or ``None`` if the paper gives none.
      ignore_index: label value excluded from every metric.
    """

    name: str
    class_names: tuple[str, ...]
    prompt_names: tuple[str, ...]
    background_threshold: float
    paper_background_threshold: Optional[float]
    ignore_index: int = 255

    def __post_init__(self):
        if len(self.class_names) != len(self.prompt_names):
            raise ValueError(
                f"{self.name}: {len(self.class_names)} class names but {len(self.prompt_names)} prompt names")

    @property
    def num_classes(self) -> int:
        """Number of classes ``C`` including background."""
        return len(self.class_names)


_SPECS = {
    "voc": DatasetSpec("voc", VOC_CLASSES, VOC_PROMPT_NAMES, 0.95, 0.9),
    "context": DatasetSpec("context", CONTEXT_CLASSES, CONTEXT_PROMPT_NAMES, 0.35, 0.5),
    "coco_object": DatasetSpec("coco_object", COCO_OBJECT_CLASSES, COCO_OBJECT_PROMPT_NAMES, 0.95, None),
}

_ALIASES = {
    "voc": "voc", "voc12": "voc", "voc2012": "voc", "pascal_voc": "voc", "pascal_voc12": "voc",
    "context": "context", "pascal_context": "context", "pcontext": "context", "context60": "context",
    "coco_object": "coco_object", "coco": "coco_object", "cocoobject": "coco_object",
    "coco_objects": "coco_object",
}


def available_datasets() -> tuple[str, ...]:
    """Canonical names accepted by :func:`get_spec`."""
    return tuple(_SPECS)


def get_spec(name: str) -> DatasetSpec:
    """Returns the :class:`DatasetSpec` of a benchmark.

    Args:
      name: ``voc``, ``context`` or ``coco_object`` (case-insensitive; ``-`` and ``_`` are equivalent;
        common aliases such as ``pascal_voc``, ``pascal_context``, ``coco`` are accepted).

    Raises:
      KeyError: for an unknown name (the message lists the known ones).
    """
    key = name.strip().lower().replace("-", "_")
    if key not in _ALIASES:
        raise KeyError(f"unknown dataset {name!r}; known: {', '.join(available_datasets())} "
                       f"(aliases: {', '.join(sorted(_ALIASES))})")
    return _SPECS[_ALIASES[key]]
