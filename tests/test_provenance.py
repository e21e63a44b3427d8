"""`smaug_provenance.json` has one writer and one reader (the plugin's); smaug validates and walks what it reads."""

import json

import pytest

from axolotl_dpop import provenance as plugin
from smaug.common.errors import UserError
from smaug.common.records import package_versions
from smaug.release.provenance import load_provenance, local_stages


def test_the_plugin_records_the_same_versions_as_smaug():
    # The plugin keeps its own copy (it must import without smaug); both must say the same.
    assert plugin._package_versions(plugin.TRAINING_PACKAGES) == package_versions(*plugin.TRAINING_PACKAGES)
    assert package_versions("no-such-distribution-xyz") == {"no-such-distribution-xyz": None}


def test_record_written_by_the_plugin_is_read_back_and_nests_its_parent(tmp_path):
    base = tmp_path / "base"
    plugin.write_provenance(base, plugin.provenance_record(base_model=None, license="apache-2.0", created_by="t"))
    child = tmp_path / "child"
    plugin.write_provenance(child, plugin.provenance_record(base_model=str(base), recipe="recipes/x.yml",
                                                            training={"rl": "dpop"}))
    record = load_provenance(child)
    assert record["schema"] == plugin.SCHEMA_VERSION and record["recipe"] == "recipes/x.yml"
    assert record["parent"]["created_by"] == "t" and record["parent"]["license"] == "apache-2.0"
    assert record["finished_at"].endswith("Z") and record["versions"]["torch"]
    stages, hub_base = local_stages(child)
    assert len(stages) == 2 and hub_base is None
    assert not [p for p in child.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("content,message", [
    (b"{not json", "not valid JSON"),
    (b"\xff\xfe\x00", "not valid JSON"),
    (b"[]", "expected a JSON object"),
    (json.dumps({"schema": 99, "base_model": "a/b"}).encode(), "reads schema 1"),
])
def test_unreadable_provenance_is_a_user_error_naming_the_file(tmp_path, content, message):
    (tmp_path / plugin.PROVENANCE_FILE).write_bytes(content)
    with pytest.raises(UserError, match=message) as err:
        load_provenance(tmp_path)
    assert plugin.PROVENANCE_FILE in str(err.value)


def test_tiny_model_provenance_ends_the_lineage_with_its_own_licence(tiny_model_dir):
    record = load_provenance(tiny_model_dir)
    assert record["license"] == "apache-2.0" and record["base_model"] is None
    assert record["created_by"].startswith("smaug showcase tiny-model")
