"""Statement classification flags shared by both classifier twins and the session machines."""

from __future__ import annotations

PIN_SET = 1 << 0  # session SET/RESET/set_config of a parameter the proxy cannot track
SET_TRACKED = 1 << 1  # not a pin: SET/RESET of a parameter PostgreSQL reports via ParameterStatus
PIN_PREPARE = 1 << 2  # SQL PREPARE / EXECUTE / DEALLOCATE
PIN_TEMP = 1 << 3  # temporary table / sequence / view
PIN_CURSOR = 1 << 4  # DECLARE
PIN_LISTEN = 1 << 5  # LISTEN
PIN_LOAD = 1 << 6  # LOAD
PIN_ADVISORY_LOCK = 1 << 7  # session-level advisory lock functions
PIN_DISCARD = 1 << 8  # DISCARD

PIN_REASON_CODES: dict[int, str] = {
    PIN_SET: "set",
    PIN_PREPARE: "prepare",
    PIN_TEMP: "temp_object",
    PIN_CURSOR: "cursor",
    PIN_LISTEN: "listen",
    PIN_LOAD: "load",
    PIN_ADVISORY_LOCK: "advisory_lock",
    PIN_DISCARD: "discard",
}

PIN_MASK = 0
for _bit in PIN_REASON_CODES:
    PIN_MASK |= _bit
del _bit


def pin_reasons(flags: int) -> list[str]:
    """Reason codes of the PIN_* bits set in `flags`, in bit order."""
    return [reason for bit, reason in PIN_REASON_CODES.items() if flags & bit]
