"""The suite's own file order (tests/durations.py): longest files first, each file's tests in order."""

from types import SimpleNamespace

from tests.durations import file_seconds, longest_files_first


def test_file_seconds_sums_setup_call_and_teardown_per_file():
    log = [
        "2.50s setup    tests/test_a.py::test_one",
        "10.00s call     tests/test_a.py::test_one",
        "0.60s teardown tests/test_a.py::test_one",
        "3.20s call     tests/test_b.py::test_two[x]",
        "0.30s call     tests/test_c.py::test_tiny",  # rounds to 0 s: left out
        "457 passed in 770.63s (0:12:50)",
    ]
    assert file_seconds(log) == {"test_a.py": 13, "test_b.py": 3}


def test_longest_recorded_files_come_first_and_unknown_ones_last_in_their_order():
    def item(path):
        return SimpleNamespace(fspath=f"/repo/tests/{path}")

    items = [
        item("test_a_new.py"),
        item("test_deployments.py"),
        item("test_pipeline_e2e.py"),
        item("test_z_new.py"),
        item("test_deployments.py"),
        item("test_pipeline_e2e.py"),
    ]
    ordered = [str(i.fspath).rsplit("/", 1)[1] for i in longest_files_first(items)]
    # recorded: test_pipeline_e2e.py 335 s > test_deployments.py 169 s; the new files keep their order
    assert ordered == ["test_pipeline_e2e.py"] * 2 + ["test_deployments.py"] * 2 + ["test_a_new.py", "test_z_new.py"]
    first_e2e = [i for i in longest_files_first(items) if "e2e" in str(i.fspath)]
    assert first_e2e == [items[2], items[5]]  # a file's tests keep their order
