"""Images → feature vectors, behind one interface and one registry of names (docs/DESIGN.md §5).

`base` holds the interface, the input checks and the batching every extractor shares; `pixels`,
`demo_classifier` and `inception` (pool3 for FID, mixed_6/conv for sFID) are the extractors;
`registry` builds them by name and says which have their weights on disk.
"""

from minority_core.metrics.features.base import BatchedExtractor, FeatureExtractor, Images, check_images, quantize
from minority_core.metrics.features.demo_classifier import DemoClassifierFeatures
from minority_core.metrics.features.inception import (
    INCEPTION_WEIGHTS_ENV,
    INCEPTION_WEIGHTS_FILE,
    INCEPTION_WEIGHTS_URL,
    InceptionSpatialFeatures,
    InceptionV3,
    InceptionV3Features,
    inception_weights_location,
    inception_weights_path,
    load_inception,
    resize_bilinear_tf1,
)
from minority_core.metrics.features.pixels import RawPixels
from minority_core.metrics.features.registry import ExtractorInfo, available_extractors, get_extractor, register_extractor

__all__ = [
    "INCEPTION_WEIGHTS_ENV",
    "INCEPTION_WEIGHTS_FILE",
    "INCEPTION_WEIGHTS_URL",
    "BatchedExtractor",
    "DemoClassifierFeatures",
    "ExtractorInfo",
    "FeatureExtractor",
    "Images",
    "InceptionSpatialFeatures",
    "InceptionV3",
    "InceptionV3Features",
    "RawPixels",
    "available_extractors",
    "check_images",
    "get_extractor",
    "inception_weights_location",
    "inception_weights_path",
    "load_inception",
    "quantize",
    "register_extractor",
    "resize_bilinear_tf1",
]
