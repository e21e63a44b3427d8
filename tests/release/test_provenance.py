"""`smaug_provenance.json` has one writer and one reader (the plugin's); smaug validates and walks what it reads."""

import json

import pytest

from axolotl_dpop import provenance as plugin
from axolotl_dpop.provenance import package_versions
from smaug.common.errors import UserError
from smaug.release.lineage import load_provenance, local_stages, resolve_license


def test_package_versions_names_what_is_installed_and_what_is_not():
    from importlib.metadata import version

    assert package_versions("torch", "no-such-distribution-xyz") == {
        "torch": version("torch"),
        "no-such-distribution-xyz": None,
    }


def test_record_written_by_the_plugin_is_read_back_and_nests_its_parent(tmp_path):
    base = tmp_path / "base"
    plugin.write_provenance(base, plugin.provenance_record(base_model=None, license="apache-2.0", created_by="t"))
    child = tmp_path / "child"
    plugin.write_provenance(
        child, plugin.provenance_record(base_model=str(base), recipe="recipes/x.yml", training={"rl": "dpop"})
    )
    record = load_provenance(child)
    assert record.schema_version == plugin.SCHEMA_VERSION and record.recipe == "recipes/x.yml"
    assert record.parent["created_by"] == "t" and record.parent["license"] == "apache-2.0"
    assert record.finished_at.endswith("Z") and record.versions["torch"]
    stages, hub_base = local_stages(child)
    assert len(stages) == 2 and hub_base is None
    assert not [p for p in child.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize(
    "content,message",
    [
        (b"{not json", "not valid JSON"),
        (b"\xff\xfe\x00", "not valid JSON"),
        (b"[]", "expected a JSON object"),
        (json.dumps({"schema": 99, "base_model": "a/b"}).encode(), "reads schema 1"),
    ],
)
def test_unreadable_provenance_is_a_user_error_naming_the_file(tmp_path, content, message):
    (tmp_path / plugin.PROVENANCE_FILE).write_bytes(content)
    with pytest.raises(UserError, match=message) as err:
        load_provenance(tmp_path)
    assert plugin.PROVENANCE_FILE in str(err.value)


def test_tiny_model_provenance_ends_the_lineage_with_its_own_licence(tiny_model_dir):
    record = load_provenance(tiny_model_dir)
    assert record.license == "apache-2.0" and record.base_model is None
    assert record.model_extra["created_by"].startswith("smaug showcase tiny-model")


# --- lineages of any depth, and real cycles -----------------------------------------------------------------
def _record(base_model, parent=None, license=None):
    return {
        "schema": plugin.SCHEMA_VERSION,
        "base_model": base_model,
        "parent": parent,
        "license": license,
        "recipe": None,
        "training": {"rl": "dpop"},
        "datasets": [],
    }


def test_a_long_chain_of_local_folders_is_followed_to_its_hub_base(tmp_path):
    base = "meta-llama/Llama-2-7b-chat-hf"
    for index in range(70):  # 70 stages, each a folder whose base_model is the previous folder (not nested)
        plugin.write_provenance(tmp_path / f"s{index}", _record(str(tmp_path / f"s{index - 1}") if index else base))
    stages, hub_base = local_stages(tmp_path / "s69")
    assert (len(stages), hub_base) == (70, base)
    assert resolve_license(tmp_path / "s69").license.license == "llama2"


def test_a_provenance_file_nested_too_deep_to_read_is_refused_naming_it(tmp_path):
    # 3,000 nested `parent`s: past the stdlib parser's recursion; no real lineage is that long.
    depth = 3000
    text = "".join(f'{{"schema": 1, "base_model": "/gone/s{i}", "license": null, "parent": ' for i in range(depth))
    text += json.dumps(_record("meta-llama/Llama-2-7b-chat-hf")) + "}" * depth
    with pytest.raises(RecursionError):
        json.loads(text)
    (tmp_path / plugin.PROVENANCE_FILE).write_text(text)
    with pytest.raises(UserError, match=f"{plugin.PROVENANCE_FILE}: its `parent` records are nested deeper"):
        local_stages(tmp_path)


def test_a_cycle_of_local_folders_is_refused_by_identity(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "alias").symlink_to(tmp_path / "a")  # the same folder under another name
    plugin.write_provenance(tmp_path / "a", _record(str(tmp_path / "b")))
    plugin.write_provenance(tmp_path / "b", _record(str(tmp_path / "alias") + "/"))
    with pytest.raises(UserError, match=r"leads back to .*a/smaug_provenance.json.*the lineage is a cycle"):
        local_stages(tmp_path / "a")


@pytest.mark.parametrize("field,value", [("parent", "oops"), ("base_model", 7), ("datasets", ["x"]), ("training", [1])])
def test_provenance_fields_of_the_wrong_type_are_named(tmp_path, field, value):
    record = {**_record("meta-llama/Llama-2-7b-chat-hf"), field: value}
    with pytest.raises(ValueError, match=f"`{field}`"):  # never written
        plugin.write_provenance(tmp_path, record)
    (tmp_path / plugin.PROVENANCE_FILE).write_text(json.dumps(record))
    with pytest.raises(UserError, match=f"`{field}`"):
        local_stages(tmp_path)


def test_licence_table_chains_of_any_depth_and_real_cycles(tmp_path):
    import yaml

    plugin.write_provenance(tmp_path / "m", _record("acme/m40"))
    models = {f"acme/m{i}": {"license": "mit", "parent": f"acme/m{i - 1}" if i else None} for i in range(41)}
    table = tmp_path / "licenses.yaml"
    table.write_text(yaml.safe_dump({"schema": 1, "models": models}))
    assert [e.model for e in resolve_license(tmp_path / "m", table_path=table).hub_chain][-1] == "acme/m0"
    models["acme/m0"]["parent"] = "acme/m40"
    table.write_text(yaml.safe_dump({"schema": 1, "models": models}))
    with pytest.raises(UserError, match=r"is a cycle \(acme/m40 -> .* -> acme/m0 -> acme/m40\)"):
        resolve_license(tmp_path / "m", table_path=table)
