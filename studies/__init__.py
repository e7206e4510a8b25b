"""The study files, shipped in the package as `hpo_astro.studies` (pyproject.toml maps this folder there):
`hpo-astro run --config quick-demo` runs `quick-demo.toml`, `hpo-astro init quick-demo` copies it out
(`hpo_astro.study.packaged`). This file only makes the folder a package, so an editable install finds it too."""
