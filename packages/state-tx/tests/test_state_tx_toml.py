"""cell-load TOML semantics, case by case: [datasets] patterns, [training] < [zeroshot] < [fewshot]."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from ftcore.errors import UserError
from state_tx.data import DataKwargs, expand_braces, plan_splits, read_experiment_toml, resolve_dataset_files

KW = DataKwargs(pert_col="gene", cell_type_key="cell_type", batch_col="gem_group", control_pert="non-targeting")


def splits(tmp_path, text, kw=KW):
    """TOML text -> {split: {(cell type, perturbation): n cells}} and the plan."""
    path = tmp_path / "c.toml"
    path.write_text(text)
    metas, vocab, plans, _ = plan_splits(read_experiment_toml(path), kw, seed=0)
    out = {}
    for split, plan in plans.items():
        cells = {}
        for fid, rows in plan.groups:
            m = metas[fid]
            key = (vocab.cell_types[m.cell_type[rows[0]]], vocab.perts[m.pert[rows[0]]])
            cells[key] = cells.get(key, 0) + len(rows)
        out[split] = cells
    return out, plans, metas, vocab


def perts_of(cells, celltype):
    return {p for (c, p) in cells if c == celltype}


def test_training_only_puts_every_cell_in_train(tmp_path, tiny_h5ad, tiny_adata):
    out, plans, *_ = splits(tmp_path, f'[datasets]\nscreen = "{tiny_h5ad}"\n[training]\nscreen = "train"\n')
    assert not out["val"] and not out["test"]
    assert plans["train"].n_cells == tiny_adata.n_obs  # perturbed cells + control sentences


def test_zeroshot_moves_a_whole_cell_type(tmp_path, tiny_h5ad, tiny_perts):
    out, plans, metas, vocab = splits(tmp_path, f'''
[datasets]
screen = "{tiny_h5ad}"
[training]
screen = "train"
[zeroshot]
"screen.HepG2" = "test"
''')
    assert perts_of(out["test"], "HepG2") == set(tiny_perts)
    assert perts_of(out["train"], "HepG2") == {"non-targeting"}  # its controls stay in training
    assert perts_of(out["train"], "K562") == set(tiny_perts) | {"non-targeting"}
    assert not out["val"]
    # the test split's basal pool is HepG2's control cells
    (fid, pool), = [plans["test"].pools[pid] for _, pid in plans["test"].controls]
    assert set(np.asarray(vocab.cell_types)[metas[fid].cell_type[pool]]) == {"HepG2"}
    assert (metas[fid].pert[pool] == 0).all()


def test_fewshot_moves_listed_perturbations_only(tmp_path, tiny_h5ad, tiny_perts):
    out, *_ = splits(tmp_path, f'''
[datasets]
screen = "{tiny_h5ad}"
[training]
screen = "train"
[fewshot."screen.K562"]
val = ["{tiny_perts[0]}"]
test = ["{tiny_perts[1]}", "{tiny_perts[2]}"]
''')
    assert perts_of(out["val"], "K562") == {tiny_perts[0]}
    assert perts_of(out["test"], "K562") == {tiny_perts[1], tiny_perts[2]}
    assert perts_of(out["train"], "K562") == set(tiny_perts[3:]) | {"non-targeting"}
    assert perts_of(out["train"], "HepG2") == set(tiny_perts) | {"non-targeting"}


def test_fewshot_overrides_zeroshot_for_its_perturbations(tmp_path, tiny_h5ad, tiny_perts):
    """Priority training < zeroshot < fewshot: HepG2 is test, but two of its perturbations are val."""
    out, *_ = splits(tmp_path, f'''
[datasets]
screen = "{tiny_h5ad}"
[training]
screen = "train"
[zeroshot]
"screen.HepG2" = "test"
[fewshot."screen.HepG2"]
val = ["{tiny_perts[0]}", "{tiny_perts[1]}"]
''')
    assert perts_of(out["val"], "HepG2") == {tiny_perts[0], tiny_perts[1]}
    assert perts_of(out["test"], "HepG2") == set(tiny_perts[2:])
    assert perts_of(out["train"], "HepG2") == {"non-targeting"}


def test_zeroshot_val_split(tmp_path, tiny_h5ad, tiny_perts):
    out, *_ = splits(tmp_path, f'[datasets]\nscreen = "{tiny_h5ad}"\n[training]\nscreen = "train"\n'
                               '[zeroshot]\n"screen.K562" = "val"\n')
    assert perts_of(out["val"], "K562") == set(tiny_perts) and not out["test"]


def test_dataset_not_in_training_contributes_only_its_listed_cell_types(tmp_path, tiny_h5ad, tiny_perts, tiny_adata):
    other = tmp_path / "other.h5ad"
    shutil.copy(tiny_h5ad, other)
    out, *_ = splits(tmp_path, f'''
[datasets]
screen = "{tiny_h5ad}"
extra = "{other}"
[training]
screen = "train"
[zeroshot]
"extra.K562" = "test"
''')
    # extra's K562 perturbed cells are test; extra's HepG2 is not used at all
    assert perts_of(out["test"], "K562") == set(tiny_perts)
    n_train_hepg2 = sum(n for (c, _), n in out["train"].items() if c == "HepG2")
    assert n_train_hepg2 == int((tiny_adata.obs["cell_type"] == "HepG2").sum())  # from screen only
    # extra's K562 controls join training as observational data (cell-load), so K562 has twice the controls
    assert out["train"][("K562", "non-targeting")] == 2 * out["train"][("HepG2", "non-targeting")]


def test_dataset_patterns_braces_globs_directories(tmp_path, tiny_h5ad):
    d = tmp_path / "many"
    d.mkdir()
    for name in ("a", "b", "c"):
        shutil.copy(tiny_h5ad, d / f"{name}.h5ad")
    assert expand_braces("/x/{a,b}/{1,2}.h5ad") == ["/x/a/1.h5ad", "/x/a/2.h5ad", "/x/b/1.h5ad", "/x/b/2.h5ad"]
    names = lambda files: sorted(f.name for f in files)  # noqa: E731
    assert names(resolve_dataset_files("s", f"{d}/{{a,c}}.h5ad")) == ["a.h5ad", "c.h5ad"]
    assert names(resolve_dataset_files("s", f"{d}/*.h5ad")) == ["a.h5ad", "b.h5ad", "c.h5ad"]
    assert names(resolve_dataset_files("s", str(d))) == ["a.h5ad", "b.h5ad", "c.h5ad"]
    assert names(resolve_dataset_files("s", str(d / "b.h5ad"))) == ["b.h5ad"]
    with pytest.raises(UserError, match=r"d\.h5ad .*does not exist"):
        resolve_dataset_files("s", f"{d}/{{a,d}}.h5ad")
    with pytest.raises(UserError, match="matches no .h5ad"):
        resolve_dataset_files("s", f"{d}/zz*.h5ad")
    # a glob dataset trains on all its files
    out, plans, metas, _ = splits(tmp_path, f'[datasets]\nscreen = "{d}/*.h5ad"\n[training]\nscreen = "train"\n')
    assert len(metas) == 3 and {m.source.name for m in metas} == {"screen/a", "screen/b", "screen/c"}


@pytest.mark.parametrize("text,phrase", [
    ('[datasets]\nexample = /path/to/data.h5ad\n', "line 2"),
    ('[datasets]\nexample = /path/to/data.h5ad\n', "quote"),
    ('[datasets]\nscreen = "relative/x.h5ad"\n', "not an absolute path"),
    ('[datasets]\nscreen = "/d/x.h5ad"\n[training]\nscreen = "val"\n', 'only value is "train"'),
    ('[datasets]\nscreen = "/d/x.h5ad"\n[zeroshot]\nscreen.HepG2 = "test"\n', "quote keys that contain dots"),
    ('[datasets]\nscreen = "/d/x.h5ad"\n[fewshot]\nscreen.HepG2 = { val = ["A"] }\n', "quote keys that contain dots"),
    ('[datasets]\nscreen = "/d/x.h5ad"\n[zeroshot]\n"screen.HepG2" = "holdout"\n', 'choose "val" or "test"'),
    ('[datasets]\nscreen = "/d/x.h5ad"\n[fewshot."screen.HepG2"]\ntrain = ["A"]\n', "only val"),
    ('[datasets]\nscreen = "/d/x.h5ad"\n[fewshot."screen.HepG2"]\nval = ["A"]\ntest = ["A"]\n', "both val and test"),
    ('[datasets]\nscreen = "/d/x.h5ad"\n[training]\nother = "train"\n', "no path in [datasets]"),
    ('[datasets]\n', "is empty"),
    ('[dataset]\nscreen = "/d/x.h5ad"\n', "unknown section"),
])
def test_toml_errors_name_the_problem_and_fix(tmp_path, text, phrase):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(UserError, match=phrase.replace("[", r"\[").replace("]", r"\]")):
        read_experiment_toml(path)


def test_cell_types_and_perturbations_are_checked_against_the_files(tmp_path, tiny_h5ad, tiny_perts):
    base = f'[datasets]\nscreen = "{tiny_h5ad}"\n[training]\nscreen = "train"\n'
    with pytest.raises(UserError, match=r"no cell type 'hepg2'.*HepG2, K562"):
        splits(tmp_path, base + '[zeroshot]\n"screen.hepg2" = "test"\n')
    with pytest.raises(UserError, match="'NOPE'"):
        splits(tmp_path, base + '[fewshot."screen.K562"]\ntest = ["NOPE"]\n')
    with pytest.raises(UserError, match="control label"):
        splits(tmp_path, base + '[fewshot."screen.K562"]\ntest = ["non-targeting"]\n')


# ---- issue 16: what a TOML written by hand on another machine looks like
def test_toml_saved_with_a_bom_is_read(tmp_path, tiny_h5ad, tiny_perts):
    out, *_ = splits(tmp_path, f'\ufeff[datasets]\nscreen = "{tiny_h5ad}"\n[training]\nscreen = "train"\n'
                               '[zeroshot]\n"screen.K562" = "test"\n')
    assert perts_of(out["test"], "K562") == set(tiny_perts)


def test_tilde_in_a_dataset_path_is_the_home_directory(tmp_path, tiny_h5ad, monkeypatch):
    home = tmp_path / "home"
    (home / "data").mkdir(parents=True)
    shutil.copy(tiny_h5ad, home / "data" / "screen.h5ad")
    monkeypatch.setenv("HOME", str(home))
    path = tmp_path / "c.toml"
    path.write_text('[datasets]\nscreen = "~/data/screen.h5ad"\n[training]\nscreen = "train"\n')
    exp = read_experiment_toml(path)
    assert exp.datasets["screen"] == str(home / "data" / "screen.h5ad")
    metas, *_ = plan_splits(exp, KW, seed=0)
    assert metas[0].source.path == home / "data" / "screen.h5ad"


def test_a_dataset_name_with_dots_is_one_name(tmp_path, tiny_h5ad, tiny_perts):
    out, *_ = splits(tmp_path, f'''
[datasets]
"replogle.k562" = "{tiny_h5ad}"
[training]
"replogle.k562" = "train"
[zeroshot]
"replogle.k562.HepG2" = "test"
[fewshot."replogle.k562.K562"]
val = ["{tiny_perts[0]}"]
''')
    assert perts_of(out["test"], "HepG2") == set(tiny_perts)
    assert perts_of(out["val"], "K562") == {tiny_perts[0]}


@pytest.mark.parametrize("text,phrase", [
    ('[zeroshot]\n"screen.K562" = "test"\n"screen.HepG2" = "test"\n', "no perturbed cell is left for training"),
    ('[fewshot."screen.K562"]\nval = []\n', "lists no perturbations"),
    ('[zeroshot]\n"scren.K562" = "test"\n', 'did you mean "screen.K562"'),
])
def test_split_plans_that_make_no_sense_are_refused(tmp_path, tiny_h5ad, text, phrase):
    with pytest.raises(UserError, match=phrase):
        splits(tmp_path, f'[datasets]\nscreen = "{tiny_h5ad}"\n[training]\nscreen = "train"\n' + text)


def test_labels_with_invisible_whitespace_are_quoted():
    from state_tx.data import near_label, show_labels

    assert show_labels(["A", "non-targeting ", ""]) == "A, 'non-targeting ', ''"
    assert "differs only in spaces" in near_label("non-targeting", ["non-targeting ", "A"])
    assert near_label("non-targeting", ["A"]) == ""


def test_run_paths_expand_home_and_the_toml_is_made_absolute(tmp_path, monkeypatch):
    from state_tx.config import load_run_config

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    cfg = load_run_config(["output_dir=~/runs", "data.kwargs.toml_config_path=cfg/train.toml",
                           "model.kwargs.init_from=~/ckpt/final.ckpt"])
    assert cfg.run_dir == tmp_path / "runs" / "state_tx"
    assert cfg.data.kwargs.toml_config_path == str(tmp_path / "cfg" / "train.toml")
    assert cfg.model.kwargs["init_from"] == str(tmp_path / "ckpt" / "final.ckpt")
