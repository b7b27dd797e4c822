"""Job ids are used on command lines (`convoy jobs get ID`): one that starts with `-` would be
read as an option."""

from core.settings import new_id


def test_ids_never_start_like_an_option_and_do_not_repeat() -> None:
    ids = [new_id() for _ in range(4000)]  # a leading '-' or '_' would appear ~125 times
    assert all(i[0].isalnum() for i in ids)
    assert len(set(ids)) == len(ids)
    assert all(len(i) == 27 for i in ids)
