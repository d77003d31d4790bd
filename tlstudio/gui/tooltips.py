"""One plain sentence per ML term, shown as tooltips on every control (no jargon left unexplained).

Panels call ``tip("term")``; other panels (train, distill, evaluate) may use the same texts.
"""

from __future__ import annotations

TIPS: dict[str, str] = {
    # data
    "dataset": "A folder with one sub-folder per class; each sub-folder holds the images of that class.",
    "class": "A category the model learns to recognise; here, the name of an image sub-folder.",
    "scan": "Reading every image header once to find the classes, count images and skip unreadable files.",
    "skipped": "Files that are not usable images (corrupt, empty, too large, not an image); training ignores them.",
    "warnings": "Things that can hurt training, such as tiny classes, strong imbalance or duplicate images.",
    "split": "Dividing the images into a training set the model learns from and a validation set that checks it.",
    "val_fraction": "The share of each class held back for validation; the model never trains on these images.",
    "seed": "A number that fixes the random choices (split, shuffling) so the same settings give the same result.",
    "imbalance": "Some classes have many more images than others, so the model may favour the big classes.",
    "thumbnails": "Small previews of the images, loaded only when they scroll into view.",
    "class_filter": "Show the thumbnails of one class only.",
    # model
    "backbone": "The pre-trained network whose learned features are reused; a new output layer is added for your classes.",
    "family": "The architecture the network belongs to (ResNet, EfficientNet, ViT, ...).",
    "params": "The number of learned weights; bigger networks are often more accurate but slower and need more memory.",
    "input_size": "The width and height (in pixels) images are resized to before entering the network.",
    "pretrained": "Weights already learned on a large data set (ImageNet), so the network starts out knowing useful features.",
    "offline": "The pretrained weights are already on this computer, so no download is needed.",
    "recommended": "Good starting points: small, fast networks that transfer well to most image tasks.",
    "size_filter": "Show only networks of a given size: small (< 10 M), medium (10-50 M) or large (> 50 M weights).",
    "init_pretrained": "Start from weights learned on ImageNet (downloaded once, then cached): transfer learning.",
    "init_file": "Start from a weights file you have (.safetensors preferred; .pth/.pt are loaded safely, never executed).",
    "init_run": "Chained transfer: start from a model you trained earlier in TL Studio and adapt it to this data.",
    "init_scratch": "Start from random weights: no transfer; needs much more data and is the baseline transfer is compared to.",
    "download": "Fetching the pretrained weights from the internet; you can cancel at any time.",
    # layers
    "layer_group": "A block of consecutive layers (stem, a stage of blocks, or the head) frozen or trained together.",
    "frozen": "A frozen layer keeps its pretrained weights unchanged during training (blue).",
    "trainable": "A trainable layer is adjusted to your data during training (orange).",
    "head": "The last layer that outputs one score per class; it is new, so it is always trained.",
    "stem": "The first layers, which detect edges and colours; they are generic and rarely need retraining.",
    "preset_head": "Train only the new head (feature extraction): best with little data similar to ImageNet.",
    "preset_last": "Train the head and the last N layer groups (fine-tuning the deepest, most task-specific features).",
    "preset_all": "Train every layer (full fine-tuning): best with a lot of data.",
    "preset_gradual": "Start with only the head and unfreeze one more group every K epochs, from the top down.",
    "gradual_every": "How many epochs pass before the next layer group is unfrozen.",
    "similarity": "How much your images resemble everyday photos (ImageNet); similar data needs less retraining.",
    "advice": "A suggested freezing strategy, learning rate and number of epochs for your data size and similarity.",
    "trainable_params": "How many weights training will change; fewer trainable weights mean faster training and less overfitting.",
    "memory": "A rough estimate of the memory one training step needs with this batch size and image size.",
    "batch_size": "How many images are processed together in one training step; larger needs more memory.",
    "lr": "Learning rate: how big each weight update is; too high diverges, too low learns slowly.",
    "epochs": "How many times training goes through all training images.",
    "fine_tuning": "Continuing to train a pretrained network on your data, usually with a small learning rate.",
    "negative_transfer": "When the pretrained knowledge hurts instead of helps because the data sets are too different.",
}


def tip(term: str) -> str:
    """The sentence for ``term`` (KeyError for an unknown term: every control must have one)."""
    return TIPS[term]
