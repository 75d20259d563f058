"""Domain data: reading texts, packing blocks, and the weighted, resumable domain sampler."""

from __future__ import annotations

import json

import pytest
import torch

from distiller.data import DomainSampler, Shuffle, pack_blocks, read_texts

EOS = 0


@pytest.fixture(scope="module")
def tokenizer():
    """A fast HF tokenizer built in place: one id per word (ids 1.. for w1, w2, …), EOS = 0."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<eos>": EOS, **{f"w{i}": i for i in range(1, 100)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<eos>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<eos>")


def words(*ids):
    return " ".join(f"w{i}" for i in ids)


def test_read_texts(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text('{"text": "a b"}\n\n{"text": "c", "id": 3}\n')
    assert read_texts(path) == ["a b", "c"]
    path.write_text('{"text": "a"}\n{"text": \n')
    with pytest.raises(ValueError, match=r"train.jsonl:2: not valid JSON"):
        read_texts(path)
    path.write_text('{"text": "a"}\n{"body": "b"}\n')
    with pytest.raises(ValueError, match=r"train.jsonl:2: expected an object"):
        read_texts(path)


def test_pack_blocks_places_eos_before_each_document_and_drops_the_tail(tokenizer):
    # stream: 0 1 2 3 | 0 4 5 | 0 6 7 8 9 → 12 tokens; block_size 3 → width 4 → 3 blocks, nothing dropped
    blocks = pack_blocks([words(1, 2, 3), words(4, 5), words(6, 7, 8, 9)], tokenizer, block_size=3, eos_id=EOS)
    assert blocks.dtype == torch.long and blocks.shape == (3, 4)
    assert blocks.tolist() == [[0, 1, 2, 3], [0, 4, 5, 0], [6, 7, 8, 9]]
    # block_size 4 → width 5 → 2 blocks; the last 2 tokens (8, 9) are dropped
    blocks = pack_blocks([words(1, 2, 3), words(4, 5), words(6, 7, 8, 9)], tokenizer, block_size=4, eos_id=EOS)
    assert blocks.tolist() == [[0, 1, 2, 3, 0], [4, 5, 0, 6, 7]]
    inputs, labels = blocks[:, :-1], blocks[:, 1:]
    assert inputs.shape == labels.shape == (2, 4) and labels[0].tolist() == [1, 2, 3, 0]


def test_pack_blocks_without_a_fast_backend_and_too_little_data(tokenizer):
    class Plain:  # a tokenizer with only __call__, like a slow HF tokenizer
        def __call__(self, texts, add_special_tokens=False):
            return {"input_ids": [[int(w[1:]) for w in t.split()] for t in texts]}

    assert pack_blocks([words(1, 2), words(3)], Plain(), block_size=4, eos_id=EOS).tolist() == [[0, 1, 2, 0, 3]]
    with pytest.raises(ValueError, match=r"domain 'code' has 1 documents, 3 tokens: fewer than one block of 5"):
        pack_blocks([words(1, 2)], tokenizer, block_size=4, eos_id=EOS, domain="code")


# --------------------------------------------------------------------------------------------- sampler

def make_blocks(sizes: dict[str, int], width: int = 3) -> dict[str, torch.Tensor]:
    """Block j of a domain holds (domain index · 1000 + j) in every column: easy to trace back."""
    return {d: (torch.arange(n) + 1000 * i).unsqueeze(1).repeat(1, width) for i, (d, n) in enumerate(sizes.items())}


SIZES = {"code": 7, "prose": 5, "arithmetic": 11, "records": 3}
WEIGHTS = {"code": 0.4, "prose": 0.3, "arithmetic": 0.2, "records": 0.1}


def draw(sampler, n_batches, batch_size=4, **kw):
    out = [sampler.next_batch(batch_size, **kw) for _ in range(n_batches)]
    return torch.cat([rows for rows, _ in out]), [d for _, names in out for d in names]


def test_deterministic_for_a_seed_and_rows_match_their_domain():
    a, names_a = draw(DomainSampler(make_blocks(SIZES), WEIGHTS, seed=1), 10)
    b, names_b = draw(DomainSampler(make_blocks(SIZES), WEIGHTS, seed=1), 10)
    c, _ = draw(DomainSampler(make_blocks(SIZES), WEIGHTS, seed=2), 10)
    assert torch.equal(a, b) and names_a == names_b and not torch.equal(a, c)
    index = {d: i for i, d in enumerate(SIZES)}
    assert [int(v) // 1000 for v in a[:, 0]] == [index[d] for d in names_a]
    # the order of the blocks dict does not matter
    d, _ = draw(DomainSampler(dict(reversed(make_blocks(SIZES).items())), WEIGHTS, seed=1), 10)
    assert torch.equal(a, d)


def test_realised_mixture_matches_the_weights():
    sampler = DomainSampler(make_blocks(SIZES), WEIGHTS, seed=0)
    n = 20_000
    draw(sampler, n // 50, batch_size=50)
    counts = sampler.counts
    assert sum(counts.values()) == n
    chi2 = sum((counts[d] - n * w) ** 2 / (n * w) for d, w in WEIGHTS.items())
    assert chi2 < 16.3  # the 0.999 quantile of chi-square with 3 degrees of freedom (and seeded)


def test_every_block_once_per_epoch_then_a_new_permutation():
    sampler = DomainSampler(make_blocks({"only": 6}), {"only": 1.0}, seed=3)
    rows, _ = draw(sampler, 3, batch_size=6)
    epochs = [rows[i * 6:(i + 1) * 6, 0].tolist() for i in range(3)]
    assert all(sorted(e) == list(range(6)) for e in epochs)
    assert len({tuple(e) for e in epochs}) == 3  # reshuffled each epoch
    assert sampler.state_dict()["domains"]["only"] == {"cursor": 6, "epoch": 2, "n_blocks": 6, "rows_drawn": 18}


def test_the_shuffle_is_a_seeded_permutation_of_any_size_in_constant_memory():
    for n in (1, 2, 3, 5, 16, 17, 1000, 4097):
        order = [Shuffle(42, n)[i] for i in range(n)]
        assert sorted(order) == list(range(n)), n
        assert order == [Shuffle(42, n)[i] for i in range(n)]  # the same seed, the same order
    n = 10_000
    a, b = [Shuffle(1, n)[i] for i in range(n)], [Shuffle(2, n)[i] for i in range(n)]
    assert a != b
    # shuffled, not strided: the order is uncorrelated with the position and seldom steps by one
    mean = (n - 1) / 2
    correlation = sum((i - mean) * (v - mean) for i, v in enumerate(a)) / sum((i - mean) ** 2 for i in range(n))
    assert abs(correlation) < 0.05
    assert sum(abs(x - y) == 1 for x, y in zip(a, a[1:])) < 10
    assert sum(x == y for x, y in zip(a, b)) < 10  # two seeds agree about as often as chance (1 in n)
    # a domain of a trillion rows (a 129-trillion-token corpus) holds no table: any position, at once
    huge = Shuffle(7, 10 ** 12)
    assert len({huge[i] for i in range(1000)}) == 1000 and all(0 <= huge[i] < 10 ** 12 for i in range(1000))
    with pytest.raises(IndexError):
        huge[10 ** 12]


def test_state_round_trip_through_json_continues_identically():
    a = DomainSampler(make_blocks(SIZES), WEIGHTS, seed=5)
    rows_a, names_a = draw(a, 10)
    b = DomainSampler(make_blocks(SIZES), WEIGHTS, seed=5)
    first, names_first = draw(b, 4)
    state = json.loads(json.dumps(b.state_dict()))
    fresh = DomainSampler(make_blocks(SIZES), {d: 1.0 for d in SIZES}, seed=999)
    fresh.load_state_dict(state)
    rest, names_rest = draw(fresh, 6)
    assert torch.equal(rows_a, torch.cat([first, rest])) and names_a == names_first + names_rest
    assert fresh.counts == a.counts and fresh.state_dict() == a.state_dict()
    with pytest.raises(ValueError, match="data changed"):
        DomainSampler(make_blocks({**SIZES, "code": 8}), WEIGHTS, seed=5).load_state_dict(state)


def test_rank_slices_partition_the_global_batch():
    single, names = draw(DomainSampler(make_blocks(SIZES), WEIGHTS, seed=7), 5, batch_size=8)
    ranks = [DomainSampler(make_blocks(SIZES), WEIGHTS, seed=7) for _ in range(2)]
    per_rank = [[s.next_batch(4, rank=r, world_size=2) for _ in range(5)] for r, s in enumerate(ranks)]
    together = torch.cat([torch.cat([per_rank[0][k][0], per_rank[1][k][0]]) for k in range(5)])
    assert torch.equal(single, together)
    assert sum((per_rank[0][k][1] + per_rank[1][k][1] for k in range(5)), []) == names
    assert ranks[0].state_dict() == ranks[1].state_dict()


def test_set_weights_mid_run_changes_the_mixture():
    sampler = DomainSampler(make_blocks(SIZES), WEIGHTS, seed=11)
    draw(sampler, 10)
    before = sampler.counts
    sampler.set_weights({"code": 0, "prose": 0, "arithmetic": 3, "records": 1})
    assert sampler.weights == {"code": 0.0, "prose": 0.0, "arithmetic": 0.75, "records": 0.25}
    _, names = draw(sampler, 50)
    assert set(names) == {"arithmetic", "records"} and names.count("arithmetic") > names.count("records")
    assert sampler.counts["code"] == before["code"]


@pytest.mark.parametrize("weights", [
    {"code": 1.0, "prose": 1.0, "arithmetic": 1.0},  # a domain missing
    {**WEIGHTS, "law": 0.1},  # an unknown domain
    {**WEIGHTS, "code": -0.1},
    {d: 0.0 for d in WEIGHTS},
    {**WEIGHTS, "code": float("nan")},
])
def test_bad_weights_raise(weights):
    with pytest.raises(ValueError):
        DomainSampler(make_blocks(SIZES), weights, seed=0)
    sampler = DomainSampler(make_blocks(SIZES), WEIGHTS, seed=0)
    with pytest.raises(ValueError):
        sampler.set_weights(weights)


def test_bad_blocks_and_batch_arguments_raise():
    with pytest.raises(ValueError, match="one width"):
        DomainSampler({"a": torch.zeros(2, 3, dtype=torch.long), "b": torch.zeros(2, 4, dtype=torch.long)},
                      {"a": 1, "b": 1}, seed=0)
    sampler = DomainSampler(make_blocks(SIZES), WEIGHTS, seed=0)
    with pytest.raises(ValueError):
        sampler.next_batch(4, rank=2, world_size=2)
