//! The `README.md` dataset card of a package.

use std::collections::BTreeMap;

use super::SplitReport;

/// A YAML scalar: JSON strings are valid YAML double-quoted scalars.
fn q(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

/// The dataset card: YAML `configs` (data files per split) and `dataset_info` (features,
/// split sizes) so `datasets.load_dataset(repo, config, split=variant)` needs no code.
pub fn render_card(reports: &[SplitReport]) -> String {
    let mut by_config: BTreeMap<&str, Vec<&SplitReport>> = BTreeMap::new();
    for r in reports {
        by_config.entry(&r.config).or_default().push(r);
    }
    for splits in by_config.values_mut() {
        splits.sort_by(|a, b| a.split.cmp(&b.split));
    }
    let mut y = String::from("---\nconfigs:\n");
    for (config, splits) in &by_config {
        y += &format!("- config_name: {}\n  data_files:\n", q(config));
        for s in splits {
            y += &format!("  - split: {}\n    path:\n", q(&s.split));
            for f in &s.files {
                y += &format!("    - {}\n", q(f));
            }
        }
    }
    y += "dataset_info:\n";
    for (config, splits) in &by_config {
        let (layers, hidden) = (splits[0].num_layers, splits[0].hidden_size);
        y += &format!(
            "- config_name: {}\n  features:\n  - name: persona_id\n    dtype: string\n  - name: name\n    dtype: string\n  - name: sample_ids\n    sequence: string\n  - name: vector\n    dtype:\n      array2_d:\n        shape:\n        - {layers}\n        - {hidden}\n        dtype: float32\n  splits:\n",
            q(config)
        );
        for s in splits {
            y += &format!(
                "  - name: {}\n    num_bytes: {}\n    num_examples: {}\n",
                q(&s.split),
                s.num_bytes,
                s.num_rows
            );
        }
        y += &format!(
            "  download_size: {}\n  dataset_size: {}\n",
            splits.iter().map(|s| s.written_bytes).sum::<u64>(),
            splits.iter().map(|s| s.num_bytes).sum::<u64>()
        );
    }
    y += "tags:\n- persona-vectors\n- interpretability\n- pvrs\n---\n\n";
    y += "# Persona vectors\n\n";
    y += "Per-persona mean residual-stream activations, one `(num_layers, hidden_size)` float32 \
          vector per persona, written by pvrs (layout compatible with \
          persona-vectors 0.6.x). Row `i` of a vector is the output of decoder block `i`.\n\n";
    y += "Each config is `<model>__<mask_strategy>` (the model id with `/` replaced by `__`); \
          each split is a prompt variant; each row is a persona with columns `persona_id`, \
          `name`, `sample_ids` and `vector` (`Array2D`).\n\n";
    y += "| config | split | personas | shape |\n|---|---|---|---|\n";
    for (config, splits) in &by_config {
        for s in splits {
            y += &format!(
                "| `{config}` | `{}` | {} | ({}, {}) |\n",
                s.split, s.num_rows, s.num_layers, s.hidden_size
            );
        }
    }
    let sources: Vec<(&str, &str)> = by_config
        .iter()
        .filter_map(|(config, splits)| {
            splits
                .iter()
                .find_map(|s| s.model_source.as_deref())
                .map(|src| (*config, src))
        })
        .collect();
    if !sources.is_empty() {
        y += "\nThe model id names the architecture and tokenizer; these configs were computed \
              from other weights than that Hub checkpoint:\n\n";
        for (config, src) in sources {
            y += &format!("- `{config}`: {src}\n");
        }
    }
    if let Some((config, splits)) = by_config.iter().next() {
        y += &format!(
            "\n```python\nfrom datasets import load_dataset\n\nds = load_dataset(\"<this repo>\", {}, split={})\nds = ds.with_format(\"numpy\")\nvector = ds[0][\"vector\"]  # ({}, {}) float32\n```\n",
            q(config),
            q(&splits[0].split),
            splits[0].num_layers,
            splits[0].hidden_size
        );
        y += "\nOr with pvrs: `pvrs.hub.HFPersonaVectorStore(\"<this repo>\", model_name, mask_strategy).load(persona_id, variant)`.\n";
    }
    y
}
