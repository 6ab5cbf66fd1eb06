"""The tests of tests/test_export_runtimes.py that load OpenVINO/MNN into the test process (collected here, run by
tests/test_isolated.py in a pytest process of their own)."""
from tests.test_export_runtimes import (  # fixtures and tests, collected again in this module
    checkpoint,
    test_openvino_int8_quantises_backbone_and_keeps_head_float,
    test_run_exports_verifies_and_runners_read_metadata,
)
