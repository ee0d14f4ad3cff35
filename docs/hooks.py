"""mkdocs hooks (mkdocs.yml): the site's home page is README.md, its links into docs/ made relative to the site, so
that the landing page is written once, for GitHub and for the site; and lists are read as GitHub reads them."""
import re
from pathlib import Path

from mkdocs.structure.files import File

ITEM = re.compile(r'^( *)([-*+]|\d+\.) ')


def on_files(files, config):
    readme = Path(config.config_file_path).parent / 'README.md'
    text = re.sub(r'\]\(docs/', '](', readme.read_text())
    files.append(File.generated(config, 'index.md', content=text))
    return files


def on_page_markdown(markdown, **kwargs):
    """GitHub starts a list right after a paragraph line and nests items indented by 2; Python-Markdown wants a
    blank line before a list and 4 spaces for a nested one. Code blocks are left alone."""
    out, fence, in_list = [], False, False
    for line in markdown.split('\n'):
        if line.lstrip().startswith(('```', '~~~')):
            fence = not fence
        item = None if fence else ITEM.match(line)
        if item:
            indent = len(item.group(1))
            if indent == 0 and not in_list and out and out[-1].strip() and not out[-1].lstrip().startswith('|'):
                out.append('')
            if indent == 2 and in_list:
                line = '  ' + line
            in_list = True
        elif not fence and not line.strip():
            in_list = False
        out.append(line)
    return '\n'.join(out)
