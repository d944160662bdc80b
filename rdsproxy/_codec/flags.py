"""Statement classification flags shared by both classifier twins and the session machines (PostgreSQL and MySQL)."""

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


# MySQL / MariaDB dialect (classify_mysql): bits from 1 << 16 so one flags word never mixes up the two dialects.
MY_PIN_LOCK_TABLES = 1 << 16  # LOCK TABLE(S) / LOCK INSTANCE, MariaDB BACKUP LOCK / BACKUP STAGE
MY_PIN_READ_LOCK = 1 << 17  # FLUSH TABLES ... WITH READ LOCK / FOR EXPORT
MY_PIN_GET_LOCK = 1 << 18  # GET_LOCK(
MY_PIN_USER_VARIABLE = 1 << 19  # a user variable is assigned: SET @x, @x :=, INTO @x
MY_PIN_SET = 1 << 20  # session SET of a variable the proxy does not track, SET TRANSACTION, SET ROLE
MY_PIN_TEMP = 1 << 21  # CREATE TEMPORARY TABLE / SEQUENCE
MY_PIN_PREPARE = 1 << 22  # SQL PREPARE / EXECUTE / DEALLOCATE PREPARE / DROP PREPARE
MY_PIN_EXECUTABLE_COMMENT = 1 << 23  # /*! ... */ or /*M! ... */ (their content is classified as SQL too)
MY_PIN_CALC_FOUND_ROWS = 1 << 24  # SQL_CALC_FOUND_ROWS
MY_SET_TRACKED = 1 << 25  # not a pin: SET of a session variable the proxy tracks and replays
MY_USE = 1 << 26  # not a pin: USE db (the proxy re-reads the current database)
MY_READS_LAST_INSERT_ID = 1 << 27  # not a pin: LAST_INSERT_ID() without an argument
MY_READS_ROW_COUNT = 1 << 28  # not a pin: ROW_COUNT() or FOUND_ROWS()
MY_KILL = 1 << 29  # not a pin: KILL as the first keyword
MY_SETS_LAST_INSERT_ID = 1 << 30  # not a pin: LAST_INSERT_ID(expr) (the proxy reads the value back)

MY_PIN_REASON_CODES: dict[int, str] = {
    MY_PIN_LOCK_TABLES: "lock_tables",
    MY_PIN_READ_LOCK: "flush_tables_with_read_lock",
    MY_PIN_GET_LOCK: "get_lock",
    MY_PIN_USER_VARIABLE: "user_variable",
    MY_PIN_SET: "set",
    MY_PIN_TEMP: "temp_table",
    MY_PIN_PREPARE: "prepare",
    MY_PIN_EXECUTABLE_COMMENT: "executable_comment",
    MY_PIN_CALC_FOUND_ROWS: "sql_calc_found_rows",
}

MY_PIN_MASK = 0
for _bit in MY_PIN_REASON_CODES:
    MY_PIN_MASK |= _bit
del _bit


def my_pin_reasons(flags: int) -> list[str]:
    """Reason codes of the MY_PIN_* bits set in `flags`, in bit order."""
    return [reason for bit, reason in MY_PIN_REASON_CODES.items() if flags & bit]
