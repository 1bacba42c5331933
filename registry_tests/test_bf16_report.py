"""tools/bf16_report.py: the error metric and the unchanged-prediction share, and (slow) a toy DANet
trained in fp32 keeps >= 99% of its val predictions under CPU bf16 autocast, with the attention
dense and with the chunked path forced; our bf16 attention errors are those of the dense formula."""
import os

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


from conftest import load_tool  # noqa: E402


report = load_tool('bf16_report')


def test_error_stats_by_hand():
    ref = torch.tensor([[1.0, -2.0], [4.0, 0.0]])
    got = torch.tensor([[1.5, -2.0], [3.0, 0.25]])
    stats = report.error_stats(got, ref)
    # errors 0.5, 0, 1, 0.25: max 1, mean 0.4375; |ref| max 4, mean 1.75
    assert stats == pytest.approx(dict(max_abs=1.0, mean_abs=0.4375, rel_max=0.25, rel_mean=0.25))
    assert report.error_stats(ref.bfloat16(), ref)['max_abs'] == 0.0
    with pytest.raises(ValueError, match=r'error_stats: shapes differ, got \(2,\) vs reference \(2, 2\)'):
        report.error_stats(got[0], ref)


def test_unchanged_share_by_hand():
    ref = torch.tensor([[0, 1, 2, 3], [3, 3, 3, 3]])
    pred = torch.tensor([[0, 1, 2, 0], [3, 2, 3, 3]])
    assert report.unchanged_share(pred, ref) == pytest.approx(6 / 8)
    assert report.unchanged_share(ref, ref) == 1.0
    with pytest.raises(ValueError, match='unchanged_share: shapes differ'):
        report.unchanged_share(pred[0], ref)


def test_bf16_attention_errors_match_the_dense_formulas(force_chunks):
    """Quick shapes (2304 positions, chunked / flash path in training): under bf16 autocast our
    output and gradients are as close to fp32 as the dense formula's under the same autocast."""
    for name in report.BLOCKS:
        res = report.attention_errors(name, quick=True)
        assert res['ours']['output']['rel_max'] < 0.01, res['ours']['output']
        assert res['ours_worst']['rel_max'] <= 1.5 * res['dense_worst']['rel_max'] + 0.01, (name, res)
        assert res['ours_worst']['rel_mean'] <= 1.5 * res['dense_worst']['rel_mean'] + 0.01, (name, res)
        kept = [k for k, v in res['ours'].items() if not v['zero_in_exact_arithmetic']]
        assert {'output', 'grad input'} <= set(kept) and len(kept) >= 6, kept


@pytest.mark.slow
def test_trained_toy_danet_predictions_survive_bf16(tmp_path):
    """The toy DANet trained 40 iterations in fp32 (it tells 3 classes apart; 12 gave a constant map): >= 99%
    of val pixels keep their class under bf16, with the attention dense and chunked."""
    data = str(tmp_path / 'toy_cityscapes')
    load_tool('make_toy_cityscapes').main(['--out', data, '--train', '8', '--val', '3'])
    runner = report.train_toy(data, str(tmp_path / 'work'), iters=40)
    for chunked in (False, True):
        result = report.prediction_agreement(runner, chunked=chunked)
        assert result['pixels'] == 3 * 128 * 256
        assert result['classes_predicted'] >= 3, result      # not a constant map, which bf16 could not change
        assert result['unchanged'] >= report.GOAL, result
        assert result['worst_image'] >= 0.98, result
