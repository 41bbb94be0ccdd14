import pytest

from mmap_ray.grouping import Partition

TASKS = ["Art", "Clipart", "Product", "RealWorld"]


def test_parse_is_canonical_and_round_trips():
    a = Partition.parse("RealWorld+Product | Clipart+Art", TASKS)
    b = Partition.parse("Art+Clipart|Product+RealWorld", TASKS)
    assert a == b
    assert str(a) == "Art+Clipart|Product+RealWorld"
    assert Partition.parse(str(a), TASKS) == a
    assert a.group_index() == [0, 0, 1, 1]
    assert a.num_groups == 2


def test_single_and_independent():
    assert str(Partition.single(TASKS)) == "Art+Clipart+Product+RealWorld"
    ind = Partition.independent(TASKS)
    assert ind.num_groups == 4 and ind.group_index() == [0, 1, 2, 3]


@pytest.mark.parametrize(
    "text, needle",
    [
        ("Art+Clipart|Product", "misses tasks ['RealWorld']"),
        ("Art+Clipart|Product+RealWorld+Art", "repeats tasks ['Art']"),
        ("Art+Clipart|Product+RealWorld|Sketch", "unknown tasks ['Sketch']"),
        ("Art+Clipart||Product+RealWorld", "empty group"),
    ],
)
def test_bad_partitions_name_the_problem(text, needle):
    with pytest.raises(ValueError) as e:
        Partition.parse(text, TASKS)
    assert needle in str(e.value)
    assert "exactly one group" in str(e.value)


def test_duplicate_task_names_rejected():
    with pytest.raises(ValueError, match="repeats"):
        Partition.single(["Art", "Art"])
