"""Score layouts for Keras' distribution API.

Training on 8 devices, checked against one device, is the guide
examples/distributed.py, which test_examples.py runs.
"""

import keras
import keras_hub
import pytest

import keras_mft


@pytest.mark.backend_independent
def test_scores_get_their_kernels_layouts():
    mesh = keras.distribution.DeviceMesh((1, 1), ("batch", "model"), ["cpu:0"])
    layers = {
        keras_hub.models.LlamaBackbone: [
            "transformer_layer_3/self_attention/query",
            "transformer_layer_3/self_attention/attention_output",
            "transformer_layer_3/feedforward_gate_dense",
        ],
        keras_hub.models.GemmaBackbone: [
            "decoder_block_3/attention/query",
            "decoder_block_3/attention/attention_output",
            "decoder_block_3/ffw_linear",
        ],
    }
    for backbone, paths in layers.items():
        layout_map = keras_mft.extend_layout_map(backbone.get_layout_map(mesh))
        for path in paths:
            kernel = layout_map[f"{path}/kernel"]
            assert kernel is not None, path
            assert layout_map[f"{path}/scores"].axes == kernel.axes
            assert layout_map[f"{path}/num_removed"] is None  # a scalar: replicated
