import pytest

from lmcsweep.config import PRESETS, ConfigError, load_sweep, resolve


def problems(path):
    with pytest.raises(ConfigError) as info:
        load_sweep(path)
    return [(p.line, p.field, p.message) for p in info.value.problems], str(info.value)


def test_every_mistake_reported_at_once_with_lines(write_sweep):
    path = write_sweep("""\
        name: bad
        experiment: tests
        preset: lenet
        colour: blue
        data: {dataset: fashion_mnist}
        train:
          iterations: -5it
          batch_size: sixty
        replicates: 0
        instability:
          rewind: [0it, 100000it]
          alphas: 1
          noise: [data_order, weather]
        """)
    found, text = problems(path)
    fields = {(line, field) for line, field, _ in found}
    assert (4, "colour") in fields
    assert (7, "train.iterations") in fields
    assert (8, "train.batch_size") in fields
    assert (9, "replicates") in fields
    assert (12, "instability.alphas") in fields
    assert (13, "instability.noise[1]") in fields
    # the rewind point past the end is found although other fields are wrong
    assert (11, "instability.rewind[1]") in fields
    assert f"{path}:4: colour: unknown field" in text


def test_rewind_past_end_and_unknown_preset(write_sweep):
    path = write_sweep("""\
        name: bad
        experiment: tests
        preset: lenet5000
        instability: {rewind: [0it]}
        """)
    found, _ = problems(path)
    assert found[0][:2] == (3, "preset") and "lenet" in found[0][2]

    path = write_sweep("""\
        name: bad
        experiment: tests
        preset: lenet
        train: {iterations: 1ep, batch_size: 60}
        data: {dataset: fashion_mnist}
        instability:
          rewind: [0it, 2ep]
        """)
    found, _ = problems(path)
    assert found == [(7, "instability.rewind[1]",
                      "rewind point 2ep (2000 iterations) is not before the end of training (1000 iterations)")]


def test_unknown_data_set_and_missing_fields(write_sweep):
    path = write_sweep("""\
        name: bad
        preset: lenet
        data:
          dataset: svhn
        """)
    found, _ = problems(path)
    fields = {(line, field) for line, field, _ in found}
    assert (4, "data.dataset") in fields
    assert not any(field == "experiment" for _, field, _ in found)  # defaults to the sweep's name


def test_yaml_syntax_error_has_file_and_line(write_sweep):
    path = write_sweep("name: x\nexperiment: [unclosed\npreset: lenet\n")
    found, text = problems(path)
    assert len(found) == 1 and found[0][1] == "(yaml)"
    assert text.startswith(f"{path}:")


def test_unclosed_quote_points_at_its_line(write_sweep):
    path = write_sweep("name: x\nexperiment: e\npreset: lenet\ntrain:\n  lr: '0.1\n  batch_size: 60\n")
    found, text = problems(path)
    assert found[0][:2] == (5, "(yaml)") and "which starts at line 5" in found[0][2], text


def test_cadences_milestones_and_repeated_rewind_points(write_sweep):
    path = write_sweep("""\
        name: bad
        experiment: tests
        preset: resnet20
        train:
          iterations: 10ep
          eval_every: 0it
          checkpoint_every: 0ep
          milestones: [6ep, 3ep]
        instability:
          rewind: [0it, 0ep, 100it]
        """)
    found, _ = problems(path)
    fields = {(line, field) for line, field, _ in found}
    assert {(6, "train.eval_every"), (7, "train.checkpoint_every"), (8, "train.milestones"),
            (10, "instability.rewind[1]")} <= fields
    assert (10, "instability.rewind[0]") not in fields and (10, "instability.rewind[2]") not in fields


def test_duplicate_keys_rejected(write_sweep):
    path = write_sweep("name: a\nexperiment: e\npreset: lenet\nname: b\n")
    found, _ = problems(path)
    assert found == [(4, "name", "duplicate key")]


def test_resolution_uses_preset_and_overrides(write_sweep):
    sweep = load_sweep(write_sweep())
    h = resolve(sweep)
    assert (h.optimizer, h.lr, h.batch_size, h.iterations) == ("adam", 1.2e-3, 60, 60)
    assert h.iterations_per_epoch == 600 // 60
    assert h.dataset == "fashion_mnist" and h.augmentation == "none"
    assert h.eval_every == 30 and h.checkpoint_every == 20


def test_presets_table1():
    assert set(PRESETS) == {"lenet", "resnet20", "resnet20_low", "resnet20_warmup", "vgg16", "vgg16_low",
                            "vgg16_warmup", "resnet50", "inception_v3"}
    assert PRESETS["resnet20_warmup"].warmup.value == 30000 and PRESETS["resnet20_warmup"].lr == 0.03
    assert PRESETS["resnet50"].iterations.unit == "ep" and PRESETS["inception_v3"].schedule == "linear"
    assert PRESETS["lenet"].imp_density == pytest.approx(0.035, abs=0.001)


def test_search_space_values_are_checked_like_the_file(write_sweep):
    """Every value of a grid (and both ends of a range) must make a valid sweep: caught by
    `validate`, at the space's line, not later as failed trials."""
    path = write_sweep("""\
        name: g
        experiment: e
        preset: lenet
        train: {iterations: 100it}
        instability: {rewind: [0it]}
        search:
          sampler: random
          space:
            train.lr: {low: -1.0, high: 0.1}
            instability.alphas: [1, 5]
            train.warmup: [0it, 50it]
        """)
    found, text = problems(path)
    assert [(line, field) for line, field, _ in found] == [(9, "search.space.train.lr"),
                                                           (10, "search.space.instability.alphas")]
    assert "value -1.0: train.lr: input should be greater than 0" in text


def test_booleans_and_floats_are_not_taken_for_counts(write_sweep):
    """`replicates: true` is not 1 and `copies: yes` is not 1 (YAML booleans), `alphas: 2.0` is not 2."""
    path = write_sweep("name: x\nexperiment: e\npreset: lenet\nreplicates: true\n"
                       "instability: {rewind: [0it], copies: yes, alphas: 2.0}\n")
    found, _ = problems(path)
    assert {(line, field) for line, field, _ in found} == {(4, "replicates"), (5, "instability.copies"),
                                                           (5, "instability.alphas")}
    assert all(message == "input should be a valid integer" for _, _, message in found)


def test_a_key_with_nothing_after_it_is_null(write_sweep):
    """`root:` with no value is null, as in any YAML reader (it crashed the line-keeping reader)."""
    sweep = load_sweep(write_sweep("name: q\nexperiment: e\npreset: lenet\ndata:\n  root:\n"
                                   "instability:\n  rewind: [0it]\nsearch:\n"))
    assert sweep.data.root is None and sweep.search is None
    found, _ = problems(write_sweep("name: q\nexperiment: e\npreset: lenet\ntrain:\n"))
    assert found[0][:2] == (4, "train")
