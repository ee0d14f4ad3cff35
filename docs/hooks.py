"""mkdocs hook (mkdocs.yml): the site's home page is README.md, its links into docs/ made relative to the site, so
that the landing page is written once, for GitHub and for the site."""
import re
from pathlib import Path

from mkdocs.structure.files import File


def on_files(files, config):
    readme = Path(config.config_file_path).parent / 'README.md'
    text = re.sub(r'\]\(docs/', '](', readme.read_text())
    files.append(File.generated(config, 'index.md', content=text))
    return files
