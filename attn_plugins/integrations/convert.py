"""Checkpoint key mapping from OpenMMLab peers to our blocks and heads (pure dict work).

    mmcv NonLocal{1,2,3}d  -> NonLocal           (nonlocal_keys)
    mmseg PAM / CAM        -> PositionAttention / ChannelAttention
    mmseg DAHead           -> DualAttentionHead  (convert_dahead_state_dict)
    mmseg NLHead           -> NonLocalHead       (convert_nlhead_state_dict)
A whole mmseg segmentor checkpoint converts with `convert_segmentor_state_dict`.
"""
from __future__ import annotations

import re
from typing import Mapping

_PAM = {'query_project.': 'query.', 'key_project.': 'key.', 'value_project.': 'value.', 'gamma.scale': 'gamma'}


def nonlocal_key(key: str) -> str:
    """One mmcv NonLocal key (relative to the block) -> ours."""
    key = re.sub(r'^(g|phi)\.0\.', r'\1.', key)          # sub_sample wraps g/phi in Sequential(conv, pool)
    key = key.replace('concat_project.conv.', 'concat_project.')
    key = key.replace('conv_out.conv.', 'out_conv.').replace('conv_out.bn.', 'out_norm.')
    key = re.sub(r'^(g|theta|phi)\.conv\.', r'\1.', key)
    return key


def pam_key(key: str) -> str:
    for old, new in _PAM.items():
        if key.startswith(old):
            return new + key[len(old):]
    return key


def convert_dahead_state_dict(state: Mapping, prefix: str = '') -> dict:
    """mmseg DAHead keys -> DualAttentionHead keys (both heads share every other name)."""
    out = {}
    for key, value in state.items():
        if not key.startswith(prefix):
            out[key] = value
            continue
        rest = key[len(prefix):]
        if rest.startswith('pam.'):
            rest = 'pam.' + pam_key(rest[4:])
        elif rest == 'cam.gamma.scale':
            rest = 'cam.gamma'
        out[prefix + rest] = value
    return out


def convert_nlhead_state_dict(state: Mapping, prefix: str = '') -> dict:
    """mmseg NLHead keys -> NonLocalHead keys."""
    out = {}
    for key, value in state.items():
        if key.startswith(prefix + 'nl_block.'):
            key = prefix + 'nl_block.' + nonlocal_key(key[len(prefix + 'nl_block.'):])
        out[key] = value
    return out


def convert_segmentor_state_dict(state: Mapping) -> dict:
    """An mmseg EncoderDecoder checkpoint with DAHead or NLHead -> ours (decode_head.*)."""
    if any(k.startswith('decode_head.pam.') for k in state):
        return convert_dahead_state_dict(state, 'decode_head.')
    if any(k.startswith('decode_head.nl_block.') for k in state):
        return convert_nlhead_state_dict(state, 'decode_head.')
    return dict(state)
