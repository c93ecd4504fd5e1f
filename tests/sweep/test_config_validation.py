"""Configuration validation: every section's keys, types and ranges are checked against
what the methods take before anything is written; a directory that holds no computed
unit accepts a corrected configuration."""
import inspect
import json

import pytest

from repsim_jax import cli
from repsim_jax._checks import InputError
from repsim_jax.sweep import adapters
from repsim_jax.sweep import config as C
from repsim_jax.sweep import options as O
from repsim_jax.sweep.run import run_sweep

TINY = {
    "methods": ["invert"],
    "layers": ["features.15"],
    "data": {"source": "repsim_shapes", "split": "test", "n_images": 12},
    "models": [{"name": "rvgg", "arch": "small_vgg", "num_classes": 8}],
    "batch_size": 8,
    "invert": {"L": 1, "B": 2},
}

# (configuration, exception, message): one row per rule
BAD = [
    ({"invert": {"BB": 5}}, KeyError,
     r"unknown \[invert\] option 'BB'\. Did you mean 'B'\?.*Valid \[invert\] options: B, L"),
    ({"semantic": {"matchr": "greedy"}}, KeyError,
     r"unknown \[semantic\] option 'matchr'\. Did you mean 'matcher'\?"),
    ({"semantic": {"size": 64}}, InputError,
     r"\[semantic\] option 'size' belongs to matcher 'window', but the matcher is 'exact'"),
    ({"semantic": {"matcher": "exat"}}, InputError,
     r"\[semantic\] matcher: unknown value 'exat'\. Did you mean 'exact'\? Valid: identity, "
     r"exact, greedy"),
    ({"semantic": {"kernel": "cosin"}}, InputError,
     r"\[semantic\] kernel: unknown value 'cosin'\. Did you mean 'cosine'\? Valid: inner, "
     r"cosine, rbf"),
    ({"semantic": {"matcher": "auction", "eps": 1.5}}, InputError,
     r"\[semantic\] eps: 1\.5 is out of range, expected a value in \(0, 1\)"),
    ({"semantic": {"matcher": "window", "size": 0}}, InputError,
     r"\[semantic\] size: 0 is out of range, expected a value in \[1, inf\)"),
    ({"semantic": {"compare": "cka"}}, InputError, r"\[semantic\] compare: unknown value"),
    ({"invert": {"L": 0}}, InputError, r"\[invert\] L: 0 is out of range, expected a value in "
                                       r"\[1, inf\) \(maximum number of literals"),
    ({"invert": {"L": "3"}}, InputError,
     r"\[invert\] L: expected an integer .*got '3' \(str\)"),
    ({"invert": {"B": 2.5}}, InputError, r"\[invert\] B: expected an integer"),
    ({"invert": {"max_fraction": 1.5}}, InputError,
     r"\[invert\] max_fraction: 1\.5 is out of range, expected a value in \(0, 1\]"),
    ({"invert": {"max_fraction": 0.0}}, InputError, r"max_fraction: 0\.0 is out of range"),
    ({"invert": {"min_fraction": 0.4, "max_fraction": 0.3}}, InputError,
     r"\[invert\] min_fraction \(0\.4\) must be below max_fraction \(0\.3\)"),
    ({"invert": {"reduction": "sum"}}, InputError,
     r"\[invert\] reduction: unknown value 'sum'.*Valid: mean, max"),
    ({"invert": {"compat": "yes"}}, InputError, r"\[invert\] compat: expected true or false"),
    ({"invert": {"layers": []}}, InputError,
     r"\[invert\] layers: expected 'all', 'last' or a list of layer names"),
    ({"concepts": {"metric": "cos"}}, InputError,
     r"\[concepts\] metric: unknown value 'cos'\. Did you mean 'cosine'\?"),
    ({"concepts": {"k": -1}}, InputError, r"\[concepts\] k: -1 is out of range"),
    ({"cladec": {"alpha": 2}}, InputError, r"\[cladec\] alpha: 2 is out of range.*\[0, 1\]"),
    ({"cladec": {"alpha": [0.1, 1.5]}}, InputError,
     r"\[cladec\] alpha: 1.5 is out of range.*\[0, 1\]"),
    ({"cladec": {"alpha": []}}, InputError, r"\[cladec\] alpha: expected a number or a "
     r"non-empty list of numbers"),
    ({"cladec": {"alpha": [0.5, 0.5]}}, InputError, r"names the same alpha twice"),
    ({"cladec": {"lr": 0}}, InputError, r"\[cladec\] lr: 0 is out of range.*\(0, inf\)"),
    ({"summaries": {"classes": [0, "a"]}}, InputError,
     r"\[summaries\] classes: expected 'all' or a list of integers"),
    ({"invert": 5}, InputError, r"\[invert\]: expected a table of options, got 5"),
    ({"data": {"n_imgs": 3}}, KeyError,
     r"unknown \[data\] option 'n_imgs'\. Did you mean 'n_images'\?"),
    ({"data": {"n_images": 1}}, InputError,
     r"\[data\] n_images: 1 is out of range.*need at least 2 images"),
    ({"seed": "x"}, InputError, r"configuration seed: expected an integer, got 'x'"),
    ({"batch_size": 0}, InputError, r"configuration batch_size: 0 is out of range"),
    ({"distributed": {"num_processes": 2, "process_id": 2}}, InputError,
     r"\[distributed\] process_id 2 is not in 0\.\.1"),
    ({"distributed": {"coordinater_address": "h:1"}}, KeyError,
     r"unknown \[distributed\] option 'coordinater_address'\. Did you mean "
     r"'coordinator_address'\?"),
    ({"models": [{"name": "m", "arch": "small_vgg", "weight": "w.pth"}]}, KeyError,
     r"unknown \[\[models\]\] 'm' option 'weight'\. Did you mean 'weights'\?"),
    ({"models": [{"name": "m", "arch": "small_vgg", "num_classes": "8"}]}, InputError,
     r"\[\[models\]\] 'm' num_classes: expected an integer"),
]


@pytest.mark.parametrize("bad,exc,message", BAD, ids=[str(b) for b, _, _ in BAD])
def test_each_bad_option_is_named_with_its_rule(bad, exc, message):
    with pytest.raises(exc, match=message):
        C.from_dict({**TINY, **bad})


def test_the_old_misleading_semantic_message_is_gone():
    with pytest.raises(KeyError) as info:
        C.from_dict({"semantic": {"matchr": "greedy"}})
    assert "takes no option" not in str(info.value)


def test_good_options_pass_and_reach_the_config():
    cfg = C.from_dict({**TINY, "semantic": {"matcher": "auction", "eps": 0.05, "k": 8},
                       "invert": {"L": 2, "B": 4, "compat": True, "max_fraction": 1.0},
                       "cladec": {"lr": 1, "alpha": 0}})   # ints where floats are asked
    assert cfg.method_options("semantic")["eps"] == 0.05
    assert cfg.method_options("invert")["compat"] is True
    # the demo and every method's defaults are valid
    C.check_config(C.demo_config())
    C.check_config(C.SweepConfig())


def test_invert_table_names_real_parameters_of_explain():
    """Every [invert] key the table types is a keyword of invert.explain (the adapter passes
    them on as they are), and explain's own keywords are accepted."""
    from repsim_jax.invert import explain
    params = inspect.signature(explain).parameters
    for key in O.OPTIONS["invert"]:
        if key != "layers":
            assert key in params, key
    table = O.section_table("invert", C.METHOD_DEFAULTS["invert"])
    kw_only = {n for n, p in params.items() if p.kind is p.KEYWORD_ONLY}
    assert kw_only - {"devices", "mesh", "sharding", "progress"} <= set(table)
    assert not {"devices", "mesh"} & set(table)


def test_registered_and_inferred_keys_are_checked(monkeypatch):
    monkeypatch.setitem(O.OPTIONS, "newmethod", {})
    O.register_options("newmethod", width=O.Option("int", 1, 10))
    O.check_section("newmethod", {"width": 3})
    with pytest.raises(InputError, match=r"\[newmethod\] width: 11 is out of range"):
        O.check_section("newmethod", {"width": 11})
    # a section without a table: keys and types inferred from its defaults
    defaults = {"steps": 10, "rate": 0.5, "name": "x", "flag": False, "anything": None}
    O.check_section("other", {"steps": 3, "rate": 1, "flag": True, "anything": [1]},
                    defaults=defaults)
    with pytest.raises(KeyError, match=r"unknown \[other\] option 'step'\. Did you mean "
                                       r"'steps'\?"):
        O.check_section("other", {"step": 3}, defaults=defaults)
    with pytest.raises(InputError, match=r"\[other\] rate: expected a number"):
        O.check_section("other", {"rate": "fast"}, defaults=defaults)


def _cli(args, capsys):
    rc = cli.main(args)
    return rc, capsys.readouterr().err


@pytest.mark.parametrize("how", ["set", "toml"])
def test_cli_typo_fails_before_anything_is_written(tmp_path, capsys, how):
    out = tmp_path / "out"
    args = ["sweep", "--methods", "invert", "--arch", "small_vgg", "--num-classes", "8",
            "--layers", "features.15", "--n-images", "12", "--out", str(out), "--no-progress"]
    if how == "set":
        args += ["--set", "invert.BB=5"]
    else:
        toml = tmp_path / "run.toml"
        toml.write_text("[invert]\nBB = 5\n")
        args += ["--config", str(toml)]
    rc, err = _cli(args, capsys)
    assert rc == 2
    assert "repsim: error: unknown [invert] option 'BB'. Did you mean 'B'?" in err
    assert not out.exists()


def test_directory_without_a_computed_unit_takes_a_corrected_config(tmp_path, monkeypatch):
    out = tmp_path / "out"
    first = C.from_dict({**TINY, "output": str(out), "invert": {"L": 1, "B": 2}})

    def broken(unit, ctx):
        raise RuntimeError("planted failure")
    monkeypatch.setitem(adapters.ADAPTERS, "invert", broken)
    with pytest.raises(C.SweepError, match="unit invert__rvgg__features.15 failed: "
                                           "RuntimeError: planted failure"):
        run_sweep(first, progress=False, echo=None)
    monkeypatch.undo()
    assert (out / "manifest.json").is_file()
    assert not list((out / "units").glob("*.done.json"))
    # a corrected configuration (another hash) is accepted: nothing was computed
    fixed = C.from_dict({**TINY, "output": str(out), "invert": {"L": 1, "B": 3}})
    assert C.config_hash(fixed) != C.config_hash(first)
    run_sweep(fixed, progress=False, echo=None)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config_hash"] == C.config_hash(fixed)
    rows = json.loads((out / "tables" / "invert_neurons.json").read_text())
    assert len(rows) == 64 and all(r["beam"].count(";") <= 2 for r in rows)
    # now a unit is computed: a changed configuration is refused, nothing touched
    before = sorted(p.name for p in (out / "units").iterdir())
    again = C.from_dict({**TINY, "output": str(out), "invert": {"L": 1, "B": 4}})
    with pytest.raises(C.SweepError, match=r"another configuration.*invert\.B: 3 -> 4"):
        run_sweep(again, progress=False, echo=None)
    assert sorted(p.name for p in (out / "units").iterdir()) == before
    assert json.loads((out / "manifest.json").read_text()) == manifest
