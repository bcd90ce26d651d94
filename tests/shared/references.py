"""Numpy references, independent of keras-mft and Keras: masks and Llama logits."""

import numpy as np


def numpy_keep_mask(scores, removed):
    """The mask: a stable ascending sort of |score|, remove the first `removed`."""
    order = np.argsort(np.abs(scores).reshape(-1), kind="stable")
    keep = np.ones(scores.size, "float32")
    keep[order[:removed]] = 0.0
    return keep.reshape(scores.shape)


def numpy_threshold(scores, removed):
    """The bit pattern of the `removed`-th smallest |score| (removed >= 1)."""
    return int(np.sort(np.abs(scores).reshape(-1)).view(np.int32)[removed - 1])


def numpy_n_m_mask(scores, n, m, axes):
    """N:M: per run of m input weights, a stable sort; remove the first m - n."""
    others = [axis for axis in range(scores.ndim) if axis not in axes]
    moved = np.transpose(np.abs(scores), list(axes) + others)
    flat = moved.reshape(-1, m, int(np.prod([scores.shape[a] for a in others], dtype=int)))
    keep = np.ones_like(flat)
    for g in range(flat.shape[0]):
        for c in range(flat.shape[2]):
            order = np.argsort(flat[g, :, c], kind="stable")
            keep[g, order[: m - n], c] = 0.0
    keep = keep.reshape(moved.shape)
    return np.transpose(keep, np.argsort(list(axes) + others))


# A Llama forward pass: RMS norm, rotary embeddings, grouped-query attention
# and SwiGLU, as KerasHub lays out its weights.


def rms_norm(x, scale, epsilon):
    return x / np.sqrt(np.mean(x**2, axis=-1, keepdims=True) + epsilon) * scale


def rotary(x, max_wavelength):
    """x: (batch, seq, heads, head_dim); rotates the two halves of head_dim."""
    head_dim = x.shape[-1]
    inverse_freq = 1.0 / max_wavelength ** (np.arange(0, head_dim, 2) / head_dim)
    angles = np.arange(x.shape[1])[:, None] * inverse_freq[None, :]
    angles = np.concatenate([angles, angles], axis=-1)[None, :, None, :]
    first, second = np.split(x, 2, axis=-1)
    rotated = np.concatenate([-second, first], axis=-1)
    return x * np.cos(angles) + rotated * np.sin(angles)


def llama_logits(weights, token_ids, config):
    """Logits of a KerasHub `LlamaBackbone` + `LlamaCausalLM` head.

    Args:
        weights: {variable path: effective float64 array}.
        token_ids: int array (batch, seq).
        config: the backbone's `get_config()`.
    """
    epsilon = config["layer_norm_epsilon"]
    wavelength = config["rope_max_wavelength"]
    x = weights["token_embedding/embeddings"][token_ids]
    seq = token_ids.shape[1]
    causal = np.tril(np.ones((seq, seq), bool))
    for i in range(config["num_layers"]):
        w = {
            k.split("/", 1)[1]: v
            for k, v in weights.items()
            if k.startswith(f"transformer_layer_{i}/")
        }
        h = rms_norm(x, w["self_attention_layernorm/scale"], epsilon)
        q = np.einsum("btm,muh->btuh", h, w["self_attention/query/kernel"])
        k = np.einsum("btm,mvh->btvh", h, w["self_attention/key/kernel"])
        v = np.einsum("btm,mvh->btvh", h, w["self_attention/value/kernel"])
        q, k = rotary(q, wavelength), rotary(k, wavelength)
        groups = q.shape[2] // k.shape[2]
        k, v = np.repeat(k, groups, axis=2), np.repeat(v, groups, axis=2)
        scores = np.einsum("bquh,bkuh->buqk", q, k) / np.sqrt(q.shape[-1])
        scores = np.where(causal, scores, -np.inf)
        probs = np.exp(scores - scores.max(axis=-1, keepdims=True))
        probs /= probs.sum(axis=-1, keepdims=True)
        attended = np.einsum("buqk,bkuh->bquh", probs, v)
        x = x + np.einsum("bquh,uhm->bqm", attended, w["self_attention/attention_output/kernel"])
        h = rms_norm(x, w["feedforward_layernorm/scale"], epsilon)
        gate = h @ w["feedforward_gate_dense/kernel"]
        up = h @ w["feedforward_intermediate_dense/kernel"]
        silu = gate / (1.0 + np.exp(-gate))
        x = x + (up * silu) @ w["feedforward_output_dense/kernel"]
    x = rms_norm(x, weights["sequence_output_layernorm/scale"], epsilon)
    return x @ weights["token_embedding/reverse_embeddings"]
