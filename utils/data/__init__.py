"""Datasets: loading and caching (dataloaders), augmentation, the synthetic shapes generator, VOC/COCO converters."""
