"""Check the docs site up to Quarto's input.

`nbdev_docs` = nbdev's notebook processing (`nbdev_proc_nbs`) + `quarto render`. Quarto cannot be installed
on our machines, and `nbdev_proc_nbs` itself first tries to download Quarto when it is missing, so this script
runs the same steps as nbdev's `_pre_docs` except that download: refresh the Quarto config, rebuild the symbol
index, write the sidebar, process every notebook into `_proc/`. Then it checks the result and fails loudly:
one processed page per notebook (nbdev silently processes nothing when the repository path contains a folder
whose name starts with a dot), API docs rendered for every exported name, no error outputs.
"""
import ast
import json
import sys
from pathlib import Path

import nbdev.doclinks
from nbdev.config import get_config
from nbdev.quarto import nbdev_sidebar, refresh_quarto_yml
from nbdev.serve import proc_nbs


def fail(msg: str):
    sys.exit(f"check_docs: {msg}")


def exported_names(module_file: Path) -> list[str]:
    "The functions and classes in a generated module's `__all__` (nbdev documents those, not assigned names)."
    body = ast.parse(module_file.read_text()).body
    defined = {n.name for n in body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    for node in body:
        if isinstance(node, ast.Assign) and any(getattr(t, 'id', None) == '__all__' for t in node.targets):
            return [n for n in ast.literal_eval(node.value) if n in defined]
    return []


def main() -> int:
    cfg = get_config()
    root, nbs = cfg.config_path, cfg.nbs_path
    notebooks = sorted(p for p in nbs.glob('*.ipynb') if not p.name.startswith(('_', '.')))
    if not notebooks: fail(f"no notebooks in {nbs}")
    refresh_quarto_yml()
    nbdev.doclinks._build_modidx()
    nbdev_sidebar.__wrapped__()
    cache = proc_nbs(force=True, n_workers=0)
    pages = sorted(cache.glob('*.ipynb'))
    if not pages:
        fail(f"nbdev processed 0 pages from {len(notebooks)} notebooks into {cache}; "
             f"does the path {root} contain a folder whose name starts with '.'?")
    missing = [p.name for p in notebooks if not (cache / p.name).exists()]
    if missing: fail(f"no processed page for {missing}")
    for nb_path in notebooks:
        page = json.loads((cache / nb_path.name).read_text())
        outputs = [o for c in page['cells'] if c['cell_type'] == 'code' for o in c.get('outputs', [])]
        errors = [o for o in outputs if o.get('output_type') == 'error']
        if errors: fail(f"{nb_path.name}: processing produced errors: {errors[0].get('ename')}: {errors[0].get('evalue')}")
        docs = ''.join(''.join(o.get('data', {}).get('text/markdown', [])) for o in outputs)
        src = json.loads(nb_path.read_text())
        exp = [l.split()[-1] for c in src['cells'] for l in ''.join(c['source']).splitlines() if l.startswith('#| default_exp')]
        if not exp: print(f"{nb_path.name}: page processed (no exported module)"); continue
        module = cfg.lib_path / (exp[0].replace('.', '/') + '.py')
        names = exported_names(module)
        if not names and module.name != '__init__.py': fail(f"{nb_path.name}: {module} exports nothing (empty __all__)")
        undocumented = [n for n in names if f"### {n}\n" not in docs]
        if undocumented: fail(f"{nb_path.name}: no API docs rendered for {undocumented}")
        print(f"{nb_path.name}: page processed, API docs for {len(names)} exported names "
              f"and {docs.count('### ') - len(names)} more methods")
    print(f"check_docs: {len(pages)} pages ready for Quarto in {cache}")
    return 0


if __name__ == '__main__':
    sys.exit(main())
