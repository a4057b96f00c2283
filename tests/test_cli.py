"""The `hubkit` command as a newcomer runs it: output contract, exit codes, one-line errors."""

from __future__ import annotations

from conftest import folder_bytes, make_folder, run_cli

FILES = {"README.md": b"---\nlicense: mit\npipeline_tag: depth-estimation\n---\n# Demo\n", "w.bin": b"\x00\x01" * 500}


def test_push_pull_ls_card(tmp_path):
    src = make_folder(tmp_path / "folder", FILES)
    push = run_cli("push", str(src), "me/demo", "-m", "first", check=True)
    rev = push.stdout.strip().splitlines()[-1]
    assert len(rev) == 40
    pull = run_cli("pull", "me/demo", check=True)
    assert folder_bytes(tmp_path.joinpath(pull.stdout.strip().splitlines()[-1])) == FILES
    pull_to = run_cli("pull", "me/demo", "--to", str(tmp_path / "out"), "--revision", rev[:10], check=True)
    assert pull_to.stdout.strip().splitlines()[-1] == str(tmp_path / "out")
    assert folder_bytes(tmp_path / "out") == FILES
    assert "model    me/demo" in run_cli("ls", check=True).stdout
    revs = run_cli("ls", "me/demo", check=True).stdout
    assert rev[:12] in revs and "first" in revs and "(main)" in revs
    card = run_cli("card", "me/demo")
    assert "license: mit" in card.stdout and "depth-estimation" in card.stdout


def test_errors_are_one_line_with_nonzero_exit(tmp_path):
    cases = [
        (["pull", "../x"], "Invalid repo id '../x'"),
        (["pull", "a/b/c"], "3 part(s)"),
        (["pull", "me/missing"], "No model repo 'me/missing'"),
        (["push", str(tmp_path / "nope"), "me/x"], "does not exist"),
        (["push", str(tmp_path), "me/x"], "holds no files"),
        (["ls", "me/missing"], "No model repo"),
        (["push", ".", "me/x", "--hub", "nonsense"], "Unknown hub 'nonsense'"),
    ]
    for args, expected in cases:
        proc = run_cli(*args)
        assert proc.returncode == 1, (args, proc.stderr)
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and expected in lines[0], (args, proc.stderr)
        assert "Traceback" not in proc.stderr


def test_unknown_revision_lists_known_ones(tmp_path):
    run_cli("push", str(make_folder(tmp_path / "f", FILES)), "me/demo", "--tag", "v1", check=True)
    proc = run_cli("pull", "me/demo", "--revision", "v2")
    assert proc.returncode == 1 and "v1" in proc.stderr and "main" in proc.stderr


def test_card_without_readme_is_a_clear_error(tmp_path):
    run_cli("push", str(make_folder(tmp_path / "f", {"a.txt": b"a"})), "me/nocard", check=True)
    proc = run_cli("card", "me/nocard")
    assert proc.returncode == 1 and "README.md" in proc.stderr


def test_sync_cli_between_folders(tmp_path):
    src = make_folder(tmp_path / "f", FILES)
    run_cli("push", str(src), "me/demo", "--hub", str(tmp_path / "a"), check=True)
    run_cli("sync", "me/demo", "--from", str(tmp_path / "a"), "--to", str(tmp_path / "b"), check=True)
    out = run_cli("pull", "me/demo", "--hub", str(tmp_path / "b"), check=True).stdout.strip()
    assert folder_bytes(tmp_path.joinpath(out)) == FILES


def test_card_of_a_plain_folder_lists_its_files(tmp_path):
    run_cli("push", str(make_folder(tmp_path / "f", {"w.bin": b"1", "sub/c.json": b"{}"})), "me/plain", check=True)
    proc = run_cli("card", "me/plain")
    assert proc.returncode == 1 and "no README.md card" in proc.stderr
    assert "sub/c.json" in proc.stdout and "w.bin" in proc.stdout


def test_space_export_vendors_hubkit(tmp_path):
    out = tmp_path / "space"
    proc = run_cli("space", "export", "depth", "--to", str(out), check=True)
    assert proc.stdout.strip() == str(out)
    assert (out / "app.py").is_file() and (out / "README.md").is_file() and (out / "hubkit" / "cards.py").is_file()
    assert not list(out.rglob("__pycache__"))
    again = run_cli("space", "export", "depth", "--to", str(out))
    assert again.returncode == 1 and "not empty" in again.stderr
    missing = run_cli("space", "export", "nope", "--to", str(tmp_path / "x"))
    assert missing.returncode == 1 and "depth" in missing.stderr


def test_push_refuses_links_out_of_the_folder_in_one_line(tmp_path):
    (tmp_path / "secret.txt").write_bytes(b"hf_token")
    src = make_folder(tmp_path / "f", FILES)
    (src / "passwd").symlink_to("/etc/passwd")
    (src / "tok").symlink_to("../secret.txt")
    proc = run_cli("push", str(src), "me/demo")
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 1 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "passwd -> /etc/passwd" in lines[0] and "tok -> ../secret.txt" in lines[0]
    assert run_cli("ls", check=True).stdout.strip() == ""


def test_gc_cli(tmp_path):
    run_cli("push", str(make_folder(tmp_path / "f", FILES)), "me/demo", check=True)
    out = run_cli("gc", check=True).stdout.strip()
    assert out == "model me/demo: freed 0 object(s), 0 snapshot(s), 0 revision(s), 0 temp file(s); 0 bytes"
    assert run_cli("gc", "--repo-type", "dataset", check=True).stdout == ""
    helptext = " ".join(run_cli("gc", "--help", check=True).stdout.split())
    assert "--dry-run" in helptext and "no branch or tag reaches" in helptext
    for args, expected in ((["gc", "me/missing"], "No model repo 'me/missing'"), (["gc", "--hub", "hf"], "local")):
        proc = run_cli(*args)
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert proc.returncode == 1 and len(lines) == 1 and expected in lines[0], (args, proc.stderr)


def test_ls_of_one_repo_honours_repo_type(tmp_path):
    run_cli("push", str(make_folder(tmp_path / "f", FILES)), "me/data", "--repo-type", "dataset", "-m", "d", check=True)
    assert "dataset  me/data" in run_cli("ls", "--repo-type", "dataset", check=True).stdout
    assert "(main)" in run_cli("ls", "me/data", "--repo-type", "dataset", check=True).stdout
    proc = run_cli("ls", "me/data")  # REPO alone means a model repo, as everywhere else
    assert proc.returncode == 1 and "No model repo 'me/data'" in proc.stderr
