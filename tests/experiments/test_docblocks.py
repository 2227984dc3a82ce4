"""The results tables of the README and docs/ are the committed data's: redrawing them changes nothing."""

import pytest

from dftnet.experiments import docblocks


def test_every_block_matches_the_committed_data():
    stale = docblocks.update(docblocks.ROOT, check=True)
    assert stale == [], f"stale tables {stale}: run python -m dftnet.experiments.docblocks"


def test_a_changed_number_is_caught(tmp_path):
    for rel in sorted({f for files, _ in docblocks.BLOCKS.values() for f in files}):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text((docblocks.ROOT / rel).read_text())
    (tmp_path / "docs" / "results").symlink_to(docblocks.ROOT / "docs" / "results")
    readme = tmp_path / "README.md"
    readme.write_text(readme.read_text().replace("98.17%", "98.71%", 1))
    assert docblocks.update(tmp_path, check=True) == ["README.md: width:default"]
    assert docblocks.update(tmp_path) == ["README.md: width:default"]
    assert docblocks.update(tmp_path, check=True) == []
    readme.write_text(readme.read_text().replace("<!-- /width:default -->", ""))
    with pytest.raises(ValueError, match="width:default"):
        docblocks.update(tmp_path, check=True)
