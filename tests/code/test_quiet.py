"""Libraries' chatter is held back for one call, restored after, and shown under --verbose."""

import logging
import warnings

import pytest

from hfcast import quiet


def _emit() -> None:
    logging.getLogger("chatty.lib").info("chatty info")
    logging.getLogger("chatty.lib").error("chatty error")
    warnings.warn("internals", FutureWarning)


@pytest.fixture
def root_at(request):
    root = logging.getLogger()
    before = root.level
    root.setLevel(request.param)
    yield request.param
    root.setLevel(before)


@pytest.mark.parametrize("root_at", [logging.INFO], indirect=True)
def test_held_back_for_the_block_and_restored_after_even_on_error(root_at, caplog):
    lib = logging.getLogger("chatty.lib")
    lib.setLevel(logging.NOTSET)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with pytest.raises(RuntimeError), quiet.held_back(["chatty.lib"], root_from=("tests",),
                                                          categories=(FutureWarning,)):
            _emit()
            logging.info("through the root logger from a file under tests/: dropped")
            raise RuntimeError("the block fails")
        messages = [r.getMessage() for r in caplog.records]
        assert "chatty error" in messages and "chatty info" not in messages  # errors still show
        assert not any("root logger from" in m for m in messages)
        assert not [w for w in seen if issubclass(w.category, FutureWarning)]
        assert lib.level == logging.NOTSET and not logging.getLogger().filters
        _emit()  # after the block: everything speaks again
    assert "chatty info" in [r.getMessage() for r in caplog.records]
    assert [w for w in seen if issubclass(w.category, FutureWarning)]


@pytest.mark.parametrize("root_at", [logging.DEBUG], indirect=True)
def test_nothing_is_held_back_under_verbose(root_at, caplog):
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with quiet.held_back(["chatty.lib"], root_from=("tests",), categories=(FutureWarning,)):
            assert logging.getLogger("chatty.lib").level == logging.NOTSET and not logging.getLogger().filters
            _emit()
    assert "chatty info" in [r.getMessage() for r in caplog.records]
    assert [w for w in seen if issubclass(w.category, FutureWarning)]


@pytest.mark.parametrize("root_at", [logging.INFO], indirect=True)
def test_warnings_held_back_by_message_only_those(root_at):
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with quiet.held_back(messages=(r"\s*the lib's own cache",)):
            warnings.warn("\n  The lib's own cache was touched", UserWarning)
            warnings.warn("your input has NaN", UserWarning)
        warnings.warn("the lib's own cache again", UserWarning)  # after the block: shown
    assert [str(w.message) for w in seen] == ["your input has NaN", "the lib's own cache again"]
