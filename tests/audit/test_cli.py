"""``aigos audit verify``: on a file, on stdin, against a running server, and from the light install."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

import httpx
import hypothesis
import orjson
import pytest
from click.testing import CliRunner
from fastapi import FastAPI
from httpx import AsyncClient
from hypothesis import strategies as st

from aigos.cli import app as cli
from aigos.cli.audit import read_lines, split_lines
from aigos.core import auditlog, signing
from tests.audit.helpers import download, published_keys, record, record_bulk, rename
from tests.conftest import SECRET_KEY
from tests.helpers import TenantHandle, signup, signup_at
from tests.light_install import LightInstall
from tests.server_process import ServerProcess

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()


@dataclass
class Export:
    """An export written to a file, with its tenant and the server's published keys."""

    path: Path
    tenant: TenantHandle
    keys: dict[str, bytes]

    @property
    def pins(self) -> list[str]:
        """``--public-key`` options pinning the published keys."""
        pins: list[str] = []
        for key_id, raw in self.keys.items():
            pins += ["--public-key", f"{key_id}={signing.b64url(raw)}"]
        return pins

    def records(self) -> list[dict[str, object]]:
        """The parsed lines."""
        return [orjson.loads(line) for line in self.path.read_bytes().splitlines() if line]

    def rewrite(self, records: list[dict[str, object]]) -> None:
        """Replace the file's lines."""
        self.path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))


@pytest.fixture
async def export(client: AsyncClient, app: FastAPI, tmp_path: Path) -> Export:
    """A five-entry export with a checkpoint in the middle."""
    tenant = await signup(client, "Alpha")
    await rename(client, tenant, "Alpha 2")
    await client.get("/v1/audit/checkpoints/latest", headers=tenant.headers)
    await record(app, tenant, 3)
    path = tmp_path / "export.ndjson"
    path.write_bytes(b"\n".join(await download(client, tenant.headers)) + b"\n")
    return Export(path, tenant, await published_keys(client))


def test_a_good_export_verifies(export: Export) -> None:
    result = runner.invoke(cli, ["audit", "verify", str(export.path)])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(
        f"OK: tenant {export.tenant.id}: 5 entries (seq 1..5), 2 signed checkpoints"
    )
    assert "sealed through seq 5" in result.stdout
    assert "--public-key" in result.stderr  # the note: pinning is stronger

    pinned = runner.invoke(cli, ["audit", "verify", str(export.path), *export.pins])
    assert pinned.exit_code == 0, pinned.output
    assert pinned.stderr == ""

    as_json = runner.invoke(cli, ["audit", "verify", str(export.path), "--json", *export.pins])
    assert as_json.exit_code == 0
    report = json.loads(as_json.stdout)
    assert report["ok"] is True
    assert (report["entries"], report["checkpoints"], report["unsealed"]) == (5, 2, 0)
    assert report["key_ids"] == sorted(export.keys)

    piped = runner.invoke(cli, ["audit", "verify", "-"], input=export.path.read_bytes())
    assert piped.exit_code == 0, piped.output


def test_an_altered_entry_fails_naming_it(export: Export) -> None:
    records = export.records()
    line, target = next(
        (n, r) for n, r in enumerate(records, start=1) if r.get("seq") == 2 and r["kind"] == "event"
    )
    target["data"] = {"name": "Not what happened"}
    export.rewrite(records)

    result = runner.invoke(cli, ["audit", "verify", str(export.path), *export.pins])
    assert result.exit_code == 1
    assert f"FAILED: line {line}: entry seq=2 event_id={target['event_id']}: " in result.stdout
    assert "altered" in result.stdout

    as_json = runner.invoke(cli, ["audit", "verify", str(export.path), "--json"])
    assert as_json.exit_code == 1
    failure = json.loads(as_json.stdout)["failure"]
    assert (failure["line"], failure["seq"], failure["event_id"]) == (line, 2, target["event_id"])


def test_a_different_pinned_key_fails(export: Export) -> None:
    stranger = signing.Signer.from_seed(b"\x07" * 32)
    pin = f"{stranger.key_id}={signing.b64url(stranger.public_key)}"
    result = runner.invoke(cli, ["audit", "verify", str(export.path), "--public-key", pin])
    assert result.exit_code == 1
    assert "signed by unknown key" in result.stdout


def test_header_keys_that_lie_about_their_id_fail(export: Export) -> None:
    records = export.records()
    keys = records[0]["keys"]
    assert isinstance(keys, list)
    keys[0]["public_key"] = signing.b64url(signing.Signer.from_seed(b"\x01" * 32).public_key)
    export.rewrite(records)
    result = runner.invoke(cli, ["audit", "verify", str(export.path)])
    assert result.exit_code == 1
    assert "FAILED: line 1: export: header: key id does not match its public key" in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "give an export FILE or --url"),
        (["{file}", "--url", "http://127.0.0.1:1"], "give an export FILE or --url"),
        (["--url", "http://127.0.0.1:1"], "--url needs --api-key"),
        (["{dir}/missing.ndjson"], "cannot read"),
        (["{file}", "--public-key", "no-equals-sign"], "KEY_ID=B64URL"),
        (["{file}", "--public-key", "abc=A"], "not base64url"),
        (["{file}", "--public-key", "abc=AAAA"], "32 bytes"),
        (["{file}", "--public-key", f"0000000000000000={signing.b64url(bytes(32))}"], "that key's id is"),
        (["--url", "http://127.0.0.1:1", "--api-key", "aigos_sk_x"], "cannot download"),
    ],
)
def test_usage_errors_exit_2(export: Export, args: list[str], message: str) -> None:
    filled = [a.format(file=export.path, dir=export.path.parent) for a in args]
    result = runner.invoke(cli, ["audit", "verify", *filled], env={"AIGOS_API_KEY": ""})
    assert result.exit_code == 2, result.output
    assert message in result.stderr


@pytest.mark.slow
def test_verify_from_a_running_server(tmp_path: Path) -> None:
    with ServerProcess(tmp_path, {"AIGOS_SECRET_KEY": SECRET_KEY}) as server:
        signed_up = signup_at(server.base_url, "Remote")
        tenant_id, key, headers = signed_up.id, signed_up.key, signed_up.headers
        for n in range(3):
            httpx.put(
                f"{server.base_url}/v1/tenants/{tenant_id}", json={"name": f"Remote {n}"}, headers=headers
            )
        published = httpx.get(server.base_url + "/v1/audit/keys").json()["keys"]
        pins = [f"{k['key_id']}={k['public_key']}" for k in published]

        result = runner.invoke(
            cli, ["audit", "verify", "--url", server.base_url, "--api-key", key, "--public-key", pins[0]]
        )
        assert result.exit_code == 0, result.output
        assert result.stdout.startswith(f"OK: tenant {tenant_id}: 4 entries (seq 1..4)")

        from_env = runner.invoke(
            cli, ["audit", "verify", "--url", server.base_url + "/", "--json"], env={"AIGOS_API_KEY": key}
        )
        assert from_env.exit_code == 0, from_env.output
        assert json.loads(from_env.stdout)["sealed_through"] == 4
        assert "--public-key" in from_env.stderr

        refused = runner.invoke(
            cli, ["audit", "verify", "--url", server.base_url, "--api-key", "aigos_sk_live_nope"]
        )
        assert refused.exit_code == 2
        assert "answered 401" in refused.stderr


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("settings", ["embedded"], indirect=True)
def test_the_light_install_verifies_exports(export: Export, light_install: LightInstall) -> None:
    """`pip install aigos` (client lock, no server packages) is enough for `aigos audit verify`."""
    run, python = light_install.run, light_install.python
    for module in ("fastapi", "sqlalchemy", "aigos.server.app"):
        missing = run(python, "-c", f"import {module}", check=False)
        assert missing.returncode != 0, module
        assert "ModuleNotFoundError" in missing.stderr
    installed = run(python, "-c", "import aigos, pathlib; print(pathlib.Path(aigos.__file__).parent)").stdout
    assert str(light_install.venv) in installed  # the wheel, not this checkout

    good = run(light_install.script("aigos"), "audit", "verify", export.path, *export.pins, check=False)
    assert good.returncode == 0, good.stdout + good.stderr
    assert good.stdout.startswith("OK: tenant")

    records = export.records()
    assert (records[4]["kind"], records[4]["seq"]) == ("event", 3)  # after the checkpoint at 2
    records[4]["data"] = {"forged": True}
    export.rewrite(records)
    bad = run(light_install.script("aigos"), "audit", "verify", export.path, check=False)
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert f"FAILED: line 5: entry seq=3 event_id={records[4]['event_id']}: " in bad.stdout


async def test_a_long_export_verifies_line_by_line_and_truncation_is_named(
    client: AsyncClient, app: FastAPI, tmp_path: Path
) -> None:
    tenant = await signup(client, "Alpha")
    await record_bulk(app, client, tenant, 6_000)
    lines = await download(client, tenant.headers)
    path = tmp_path / "long.ndjson"
    path.write_bytes(b"\n".join(lines) + b"\n")
    pins = [f"{key_id}={signing.b64url(raw)}" for key_id, raw in (await published_keys(client)).items()]

    result = runner.invoke(cli, ["audit", "verify", str(path), "--public-key", pins[0], "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert (report["ok"], report["entries"], report["last_seq"], report["checkpoints"]) == (
        True,
        6_001,
        6_001,
        6,
    )

    # Cut in the middle of a line, as an interrupted download or a full disk leaves a file.
    cut_line = 4_321
    cut = sum(len(line) + 1 for line in lines[: cut_line - 1]) + len(lines[cut_line - 1]) // 2
    path.write_bytes(path.read_bytes()[:cut])
    for args, stdin in (([str(path)], None), (["-"], path.read_bytes())):
        truncated = runner.invoke(cli, ["audit", "verify", *args, "--json"], input=stdin)
        assert truncated.exit_code == 1, truncated.output
        failure = json.loads(truncated.stdout)["failure"]
        assert failure["line"] == cut_line
        assert failure["reason"].startswith("not JSON")


@hypothesis.settings(max_examples=200, deadline=None, database=None)
@hypothesis.given(
    parts=st.lists(st.binary(max_size=12).map(lambda b: b.replace(b"\n", b"")), max_size=12),
    end_with_newline=st.booleans(),
    chunk=st.integers(min_value=1, max_value=40),
)
def test_lines_are_split_the_same_however_the_stream_is_chunked(
    parts: list[bytes], end_with_newline: bool, chunk: int
) -> None:
    data = b"\n".join(parts) + (b"\n" if end_with_newline and parts else b"")
    expected = io.BytesIO(data).readlines()
    chunks = [data[i : i + chunk] for i in range(0, len(data), chunk)]
    assert list(split_lines(chunks, 64)) == expected
    assert list(read_lines(io.BytesIO(data), 64)) == expected


@pytest.mark.parametrize("chunk", [1, 3, 7, 100])
def test_a_line_over_the_limit_is_cut_there_and_reading_stops(chunk: int) -> None:
    data = b"\n" + b"x" * 25 + b"\nnever read\n"
    chunks = [data[i : i + chunk] for i in range(0, len(data), chunk)]
    assert list(split_lines(chunks, 10)) == [b"\n", b"x" * 11]
    assert list(read_lines(io.BytesIO(data), 10))[:2] == [b"\n", b"x" * 11]
    # The verifier fails on the cut line (the first is blank), never reading what follows it.
    for lines in (split_lines(chunks, 10), read_lines(io.BytesIO(data), 10)):
        report = auditlog.verify_export(lines, max_line_bytes=10)
        assert report.failure is not None
        assert (report.failure.line, report.failure.reason) == (2, "line longer than 10 bytes")
