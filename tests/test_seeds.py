"""The derived seeds keep their values: runs, resumes and fixtures depend on every one of them."""

from sendvae_cli import seeds


def test_training_seeds_keep_their_values():
    assert seeds.micro_batch_seed(0, 0, 0) == 1
    assert seeds.micro_batch_seed(7, 123, 5) == 18_586_071_792
    assert seeds.sit_micro_batch_seed(0, 0, 0) == 7_233_566_185_585_124_811
    assert seeds.sit_micro_batch_seed(7, 123, 5) == 4_849_204_311_549_363_717
    assert [seeds.view_bit(3, p) for p in range(16)] == [0, 1, 0, 1, 1, 0, 1, 1, 1, 0, 1, 1, 0, 0, 0, 1]
    assert seeds.epoch_seed(7, 3) == 7_000_024
    assert seeds.preview_seed(7) == 12_352
    assert seeds.row_seed(0, 0, 0) == (7_673_886_842_070_939_776, 0)
    assert seeds.row_seed(7, 2, 11) == (752_545_613_721_166_592, 0)
    assert seeds.probe_epoch_rng(7, 2).integers(0, 1000, 4).tolist() == [281, 277, 152, 445]


def test_sampling_and_data_seeds_keep_their_values():
    assert seeds.sample_seed(0, 0) == 469_553_749_563_401_809
    assert seeds.sample_seed(7, 11) == 3_551_207_124_990_082_337
    assert seeds.label_rng(7, 1).integers(0, 1000, 4).tolist() == [726, 970, 874, 794]
    assert seeds.label_rng(7, 3).integers(0, 1000, 4).tolist() == [392, 562, 967, 4]
    assert seeds.split_rng(7).permutation(10).tolist() == [0, 3, 6, 7, 2, 5, 1, 8, 4, 9]
    assert seeds.shape_row_rng(7, 11).integers(0, 1000, 4).tolist() == [959, 158, 563, 492]


def test_torch_generators_fit_the_seeds():
    """torch.Generator.manual_seed takes a signed 64-bit value: every integer seed stays below 2**63."""
    import torch

    for value in (seeds.micro_batch_seed(2**40, 10**6, 512), seeds.sit_micro_batch_seed(1, 2, 3),
                  seeds.row_seed(1, 2, 3)[0], seeds.sample_seed(2**40, 10**6)):
        assert 0 <= value < 2**63
        torch.Generator().manual_seed(value)
