"""Write the get-yeast bad-input corpus (small files + cases.json). Deterministic; re-run to regenerate:

    python tests/bad_inputs/get-yeast/make_corpus.py

cases.json maps a case name to the `get-yeast` argv (placeholders: {corpus} this folder, {out} a
fresh output dir, {tiny_model} the packaged yeast_model_tiny.yaml) and the phrase its one-line error
must contain. good.csv is a valid table the config/checkpoint cases use. The shared checkpoint corpus
(../checkpoints) is fed to `get-yeast train --checkpoint` by the test as well.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import yaml

from get_yeast.config import packaged_config
from get_yeast.model import GETYeast
from get_yeast.synthetic import make_yeast_table, write_get_checkpoint

HERE = Path(__file__).parent
TRAIN = ["train", "--data", "{corpus}/good.csv", "--model-config", "{tiny_model}", "--output", "{out}",
         "--max-steps", "1", "--no-progress"]


def main() -> None:
    cases: dict[str, dict] = {}
    good = make_yeast_table(n_conditions=6, n_windows=1, n_regions=4, seed=7)

    def case(name: str, argv: list[str], phrase: str) -> None:
        cases[name] = {"argv": argv, "phrase": phrase}

    def table(name: str, df) -> list[str]:
        df.to_csv(HERE / name, index=False)
        return [("{corpus}/" + name if a == "{corpus}/good.csv" else a) for a in TRAIN]

    def edit(**changes):
        df = good.copy()
        for col, value in changes.items():
            df[col] = df[col].astype(object)
            df.loc[df.index[2], col] = value
        return df

    good.to_csv(HERE / "good.csv", index=False)
    # ---- tables
    case("missing_medium_column", table("missing_medium_column.csv", good.drop(columns=["medium"])), "missing column 'medium'")
    case("missing_target_column", table("missing_target_column.csv", good.rename(columns={"expression": "tpm"})),
         "missing column 'expression'")
    case("nan_accessibility", table("nan_accessibility.csv", edit(accessibility=float("nan"))), "'accessibility' has 1 non-finite")
    case("inf_expression", table("inf_expression.csv", edit(expression=float("inf"))), "'expression' has 1 non-finite")
    case("text_in_motif", table("text_in_motif.csv", edit(motif_HSF1="strong")), "'motif_HSF1' has 1 non-finite")
    case("unknown_medium", table("unknown_medium.csv", edit(medium="LB")), "unknown medium 'LB'")
    case("temperature_out_of_range", table("temperature_out_of_range.csv", edit(temperature=300.0)), "outside 20-45 C")
    case("temperature_missing", table("temperature_missing.csv", edit(temperature=float("nan"))), "'temperature' is blank")
    case("od600_too_high", table("od600_too_high.csv", edit(preculture_od600=7.5)), "preculture_od600 7.5")
    case("negative_drug_concentration", table("negative_drug_concentration.csv",
                                              edit(drug="rapamycin", drug_concentration_M=-1e-6)), "must be > 0")
    case("unknown_carbon_source", table("unknown_carbon_source.csv", edit(carbon_source="sucrose")), "unknown carbon_source 'sucrose'")
    dup = good.copy()
    dup.loc[1, "region"] = dup.loc[0, "region"]
    case("duplicate_region", table("duplicate_region.csv", dup), "appears twice in sample")
    mixed = good.copy()
    mixed.loc[1, "temperature"] = 44.0
    case("condition_varies_within_sample", table("condition_varies_within_sample.csv", mixed), "two values of 'temperature'")
    wide = good.copy()
    wide.insert(3, "motif_EXTRA", 0.5)
    case("wrong_feature_count", table("wrong_feature_count.csv", wide), "but the model expects num_features=24")
    (HERE / "empty.csv").write_text("")
    case("empty_file", [a.replace("good.csv", "empty.csv") for a in TRAIN], "the file is empty")
    (HERE / "header_only.csv").write_text(",".join(good.columns) + "\n")
    case("header_only", [a.replace("good.csv", "header_only.csv") for a in TRAIN], "no data rows")
    (HERE / "not_excel.xlsx").write_bytes(b"PK\x03\x04 this is not a workbook" * 4)
    case("corrupt_excel", [a.replace("good.csv", "not_excel.xlsx") for a in TRAIN], "could not be parsed as xlsx")
    case("unsupported_format", [a.replace("good.csv", "good.parquet") for a in TRAIN], "does not exist")
    case("missing_data_file", [a.replace("good.csv", "nope.csv") for a in TRAIN], "data file")

    # ---- configs (YAML/TOML typos, missing keys, unknown names)
    train_yaml = yaml.safe_load(packaged_config("yeast_training.yaml").read_text())
    model_yaml = yaml.safe_load(packaged_config("yeast_model_tiny.yaml").read_text())

    def config(name: str, data: dict | str, phrase: str, flag: str = "--config") -> None:
        path = HERE / name
        path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
        case(name.replace(".", "_"), TRAIN + [flag, "{corpus}/" + name], phrase)

    t = json.loads(json.dumps(train_yaml))
    t["training"]["max_epochs"] = t["training"].pop("epochs")
    config("training_max_epochs.yaml", t, "unknown key 'training.max_epochs'")
    t = json.loads(json.dumps(train_yaml))
    del t["training"]["warmup_steps"]
    config("training_missing_warmup.yaml", t, "missing key 'training.warmup_steps'")
    t = json.loads(json.dumps(train_yaml))
    del t["task"]
    config("training_missing_task.yaml", t, "missing key 'task'")
    t = json.loads(json.dumps(train_yaml))
    t["machine"] = {"batch_size": 8}
    config("training_machine_batch_size.yaml", t, "unknown key 'machine'")
    t = json.loads(json.dumps(train_yaml))
    t["data"]["split_by"] = "chromosome"
    config("unknown_split.yaml", t, "unknown data.split_by 'chromosome'")
    t = json.loads(json.dumps(train_yaml))
    t["training"]["schedule"] = "linear"
    config("unknown_schedule.yaml", t, "unknown schedule 'linear'")
    t = json.loads(json.dumps(train_yaml))
    t["lora"]["target_modules"] = ["attn.query"]
    config("unknown_lora_target.yaml", t, "'attn.query' names no Linear layer")
    t = json.loads(json.dumps(train_yaml))
    t["training"]["lr"] = "fast"
    config("lr_not_a_number.yaml", t, "'training.lr' should be a number")
    config("syntax_error.yaml", "training:\n  epochs: 3\n   lr: [0.1\n", "YAML syntax error")
    config("syntax_error.toml", "[training]\nepochs = 3\nlr = 1e-3 x\n", "TOML syntax error")
    m = json.loads(json.dumps(model_yaml))
    m["region_model"]["num_layer"] = m["region_model"].pop("num_layers")
    config("model_num_layer_typo.yaml", m, "unknown key 'region_model.num_layer'", flag="--model-config")
    m = json.loads(json.dumps(model_yaml))
    m["region_model"]["num_heads"] = 5
    config("model_heads_not_divisible.yaml", m, "not divisible by num_heads 5", flag="--model-config")
    m = json.loads(json.dumps(model_yaml))
    m["condition"]["media"] = ["SC"]
    config("model_media_without_ypd.yaml", m, "unknown medium 'YPD'", flag="--model-config")
    case("output_dir_unwritable", [a.replace("{out}", "{corpus}/good.csv/run") for a in TRAIN], "is not writable")
    case("nothing_held_out", TRAIN + ["--set", "data.val_fraction=0", "--set", "data.test_fraction=0"],
         "no samples held out for validation/test")
    case("bad_override", TRAIN + ["--set", "training.epoch=3"], "unknown key 'training.epoch'")

    # ---- GET checkpoints: refused without the opt-in; wrong size with it
    torch.manual_seed(0)
    cfg = yaml.safe_load(packaged_config("yeast_model_tiny.yaml").read_text())
    from ftcore.config import from_dict
    from get_yeast.model import YeastModelConfig

    mc = from_dict(YeastModelConfig, cfg)
    mc.condition.enabled = False
    mc.region_model.output_dim = 2
    # A GET-layout checkpoint of another width (embed_dim 16; small enough for the corpus): refused
    # without the opt-in (argparse.Namespace inside), and with it no tensor fits the tiny model.
    mc.region_model.embed_dim, mc.region_model.num_heads, mc.region_model.num_layers = 16, 2, 1
    write_get_checkpoint(HERE / "get_checkpoint_16d.pth", GETYeast(mc, 2).state_dict())
    # GET-style file (argparse.Namespace + numpy scalars): reads without --trust-checkpoint since issue 19,
    # and is refused because it is another size
    case("get_checkpoint_of_another_size", TRAIN + ["--checkpoint", "{corpus}/get_checkpoint_16d.pth"],
         "matches the GET region model by name and shape")
    case("get_checkpoint_other_size", TRAIN + ["--checkpoint", "{corpus}/get_checkpoint_16d.pth", "--trust-checkpoint"],
         "matches the GET region model by name and shape")
    torch.save({"model": {"backbone.0.weight": torch.zeros(4, 4)}}, HERE / "not_get.pt")
    case("not_a_get_checkpoint", TRAIN + ["--checkpoint", "{corpus}/not_get.pt"], "none of its 1 tensors")
    case("checkpoint_missing", TRAIN + ["--checkpoint", "{corpus}/nope.pth"], "does not exist")

    # ---- evaluate
    case("evaluate_not_a_trained_model", ["evaluate", "--data", "{corpus}/good.csv", "--model", "{corpus}/not_get.pt",
                                          "--output", "{out}"], "not a get-yeast training checkpoint")
    case("evaluate_no_data_no_run_config", ["evaluate", "--model", "{corpus}/not_get.pt", "--output", "{out}"],
         "no --data given")
    (HERE / "cases.json").write_text(json.dumps(cases, indent=1) + "\n")
    print(f"{len(cases)} cases written to {HERE}")


if __name__ == "__main__":
    main()
