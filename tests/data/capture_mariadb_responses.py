"""Records raw MariaDB server responses into mariadb_responses.json: the fixture of the MyResponseScanner tests.

Run by hand against a throwaway server (never by the test suite, which needs no server):

    python tests/data/capture_mariadb_responses.py HOST PORT USER PASSWORD DATABASE

A raw-socket client (stdlib only, mysql_native_password) sends one command at a time, without and with
CLIENT_DEPRECATE_EOF, then with MariaDB's MARIADB_CLIENT_CACHE_METADATA too, and keeps the server's bytes of each
response exactly as they arrived. A response ends when
the server has been quiet for a moment, which is independent of the scanner under test: each recorded response
is one command's complete answer, so its length is where the scanner must report RESPONSE_DONE.
"""

from __future__ import annotations

import hashlib
import json
import socket
import struct
import sys
from pathlib import Path
from typing import Any

CLIENT_LONG_PASSWORD = 0x1
CLIENT_LONG_FLAG = 0x4
CLIENT_CONNECT_WITH_DB = 0x8
CLIENT_LOCAL_FILES = 0x80
CLIENT_PROTOCOL_41 = 0x200
CLIENT_TRANSACTIONS = 0x2000
CLIENT_SECURE_CONNECTION = 0x8000
CLIENT_MULTI_STATEMENTS = 0x10000
CLIENT_MULTI_RESULTS = 0x20000
CLIENT_PS_MULTI_RESULTS = 0x40000
CLIENT_PLUGIN_AUTH = 0x80000
CLIENT_SESSION_TRACK = 0x800000
CLIENT_DEPRECATE_EOF = 0x1000000
MARIADB_CLIENT_CACHE_METADATA = 1 << 4  # in MariaDB's extended capabilities (1 << 36 of the 64-bit flags)
BASE_CAPABILITIES = (
    CLIENT_LONG_PASSWORD
    | CLIENT_LONG_FLAG
    | CLIENT_CONNECT_WITH_DB
    | CLIENT_LOCAL_FILES
    | CLIENT_PROTOCOL_41
    | CLIENT_TRANSACTIONS
    | CLIENT_SECURE_CONNECTION
    | CLIENT_MULTI_STATEMENTS
    | CLIENT_MULTI_RESULTS
    | CLIENT_PS_MULTI_RESULTS
    | CLIENT_PLUGIN_AUTH
    | CLIENT_SESSION_TRACK
)
QUIET_SECONDS = 0.4

COM_INIT_DB, COM_QUERY, COM_FIELD_LIST, COM_STATISTICS = 0x02, 0x03, 0x04, 0x09
COM_PROCESS_KILL, COM_DEBUG, COM_PING = 0x0C, 0x0D, 0x0E
COM_STMT_PREPARE, COM_STMT_EXECUTE, COM_STMT_RESET, COM_SET_OPTION = 0x16, 0x17, 0x1A, 0x1B
COM_STMT_FETCH, COM_RESET_CONNECTION, COM_STMT_CLOSE = 0x1C, 0x1F, 0x19
CURSOR_TYPE_READ_ONLY = 1


def native_password_token(password: bytes, scramble: bytes) -> bytes:
    stage1 = hashlib.sha1(password).digest()
    mixed = hashlib.sha1(scramble + hashlib.sha1(stage1).digest()).digest()
    return bytes(a ^ b for a, b in zip(stage1, mixed))


class RawConnection:
    """One command-phase MySQL connection over a plain socket, recording what the server sends back."""

    def __init__(
        self, host: str, port: int, user: str, password: str, database: str, deprecate_eof: bool, cache_metadata: bool
    ) -> None:
        self.sock = socket.create_connection((host, port))
        self.buffer = b""
        greeting = self.read_packet()
        version_end = greeting.index(b"\0", 1)
        pos = version_end + 1 + 4
        scramble = greeting[pos : pos + 8]
        pos += 8 + 1 + 2 + 1 + 2 + 2 + 1 + 10
        scramble += greeting[pos : pos + 12]
        capabilities = BASE_CAPABILITIES | (CLIENT_DEPRECATE_EOF if deprecate_eof else 0)
        if cache_metadata:  # MariaDB reads extended capabilities only from clients that clear CLIENT_MYSQL
            capabilities &= ~CLIENT_LONG_PASSWORD
        token = native_password_token(password.encode(), scramble)
        response = (
            struct.pack("<IIB", capabilities, 1 << 24, 45)
            + bytes(19)
            + struct.pack("<I", MARIADB_CLIENT_CACHE_METADATA if cache_metadata else 0)
            + user.encode()
            + b"\0"
            + bytes([len(token)])
            + token
            + database.encode()
            + b"\0"
            + b"mysql_native_password\0"
        )
        self.send_packet(response, seq=1)
        answer = self.read_packet()
        if answer[:1] == b"\xfe":  # authentication switch request
            plugin_end = answer.index(b"\0", 1)
            token = native_password_token(password.encode(), answer[plugin_end + 1 : plugin_end + 21])
            self.send_packet(token, seq=3)
            answer = self.read_packet()
        if answer[:1] != b"\x00":
            raise RuntimeError(f"login failed: {answer!r}")

    def read_packet(self) -> bytes:
        while len(self.buffer) < 4 or len(self.buffer) < 4 + int.from_bytes(self.buffer[:3], "little"):
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("server closed the connection")
            self.buffer += data
        length = int.from_bytes(self.buffer[:3], "little")
        payload, self.buffer = self.buffer[4 : 4 + length], self.buffer[4 + length :]
        return payload

    def send_packet(self, payload: bytes, seq: int = 0) -> bytes:
        packet = len(payload).to_bytes(3, "little") + bytes([seq]) + payload
        self.sock.sendall(packet)
        return packet

    def read_until_quiet(self) -> bytes:
        received = self.buffer
        self.buffer = b""
        self.sock.settimeout(QUIET_SECONDS)
        try:
            while True:
                data = self.sock.recv(1 << 20)
                if not data:
                    break
                received += data
        except socket.timeout:
            pass
        finally:
            self.sock.settimeout(None)
        return received

    def command(self, command: int, body: bytes = b"") -> tuple[bytes, bytes]:
        request = self.send_packet(bytes([command]) + body)
        return request, self.read_until_quiet()


def lenenc(value: int) -> bytes:
    if value < 251:
        return bytes([value])
    if value < 1 << 16:
        return b"\xfc" + value.to_bytes(2, "little")
    return b"\xfd" + value.to_bytes(3, "little")


def execute_body(statement_id: int, cursor: bool, params: list[int]) -> bytes:
    """COM_STMT_EXECUTE arguments binding each parameter as a LONGLONG."""
    body = struct.pack("<IBI", statement_id, CURSOR_TYPE_READ_ONLY if cursor else 0, 1)
    if params:
        body += bytes((len(params) + 7) // 8) + b"\x01" + b"\x08\x00" * len(params)
        body += b"".join(struct.pack("<q", value) for value in params)
    return body


def capture(host: str, port: int, user: str, password: str, database: str) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = []
    for deprecate_eof, cache_metadata in ((False, False), (True, False), (True, True)):
        conn = RawConnection(host, port, user, password, database, deprecate_eof, cache_metadata)

        def record(
            name: str,
            command: int,
            body: bytes = b"",
            cursor: bool = False,
            conn=conn,
            eof=deprecate_eof,
            cache=cache_metadata,
        ):
            request, response = conn.command(command, body)
            records.append(
                {
                    "name": name,
                    "deprecate_eof": eof,
                    "cache_metadata": cache,
                    "command": command,
                    "cursor": cursor,
                    "request": request.hex(),
                    "response": response.hex(),
                }
            )
            return response

        def query(name: str, sql: str) -> bytes:
            return record(name, COM_QUERY, sql.encode())

        def prepare(name: str, sql: str) -> int:
            response = record(name, COM_STMT_PREPARE, sql.encode())
            if response[4] != 0:
                return -1
            return int.from_bytes(response[5:9], "little")

        query("drop_table", "DROP TABLE IF EXISTS scan_t, scan_dup")
        query("create_table", "CREATE TABLE scan_t (id INT PRIMARY KEY, label VARCHAR(300), note TEXT NULL)")
        query("create_dup", "CREATE TABLE scan_dup (id INT, v INT)")
        query(
            "insert_rows",
            "INSERT INTO scan_t SELECT seq, REPEAT(CHAR(65 + seq % 26), seq % 280), IF(seq % 3, NULL, 'n') "
            "FROM seq_1_to_400",
        )
        query("insert_dup", "INSERT INTO scan_dup VALUES (1, 1), (300, 1), (300, 2)")
        query("select_one", "SELECT 1")
        query("select_rows", "SELECT * FROM scan_t ORDER BY id")
        query("select_empty", "SELECT * FROM scan_t WHERE id < 0")
        query("select_warning", "SELECT CAST('12abc' AS INTEGER) AS n")
        query("error_no_table", "SELECT * FROM no_such_table")
        query("error_syntax", "SELEKT 1")
        query(
            "error_mid_rows",
            "SELECT id, (SELECT v FROM scan_dup WHERE scan_dup.id = scan_t.id) AS v FROM scan_t ORDER BY id",
        )
        query("multi_results", "SELECT 1 AS a; SELECT 'x' AS b, 2 AS c; UPDATE scan_t SET note = 'u' WHERE id = 1")
        query("multi_error", "SELECT 1; SELECT * FROM no_such_table; SELECT 3")
        query("begin", "BEGIN")
        query("update_in_transaction", "UPDATE scan_t SET note = 't' WHERE id < 5")
        query("select_in_transaction", "SELECT id FROM scan_t WHERE id < 5")
        query("commit", "COMMIT")
        query("start_read_only", "START TRANSACTION READ ONLY")
        query("rollback", "ROLLBACK")
        query("set_autocommit_off", "SET autocommit = 0")
        query("insert_autocommit_off", "INSERT INTO scan_dup VALUES (7, 7)")
        query("commit_autocommit_off", "COMMIT")
        query("set_autocommit_on", "SET autocommit = 1")
        query("set_session_track", "SET session_track_system_variables = 'autocommit,time_zone'")
        query("set_time_zone", "SET time_zone = '+02:00'")
        query("drop_procedure", "DROP PROCEDURE IF EXISTS scan_p")
        query(
            "create_procedure",
            "CREATE PROCEDURE scan_p() BEGIN SELECT 1 AS a; SELECT id FROM scan_t WHERE id < 3; END",
        )
        query("call_procedure", "CALL scan_p()")
        query("show_warnings", "SHOW WARNINGS")

        record("field_list", COM_FIELD_LIST, b"scan_t\0")
        record("field_list_error", COM_FIELD_LIST, b"no_such_table\0")
        record("statistics", COM_STATISTICS)
        record("ping", COM_PING)
        record("init_db", COM_INIT_DB, database.encode())
        record("init_db_error", COM_INIT_DB, b"no_such_database")
        record("set_option_multi_off", COM_SET_OPTION, b"\x01\x00")
        record("set_option_multi_on", COM_SET_OPTION, b"\x00\x00")
        record("debug", COM_DEBUG)
        record("process_kill_error", COM_PROCESS_KILL, struct.pack("<I", 999999))

        both = prepare("prepare_params_columns", "SELECT id, label FROM scan_t WHERE id > ? AND id < ?")
        params_only = prepare("prepare_params_only", "INSERT INTO scan_dup VALUES (?, ?)")
        columns_only = prepare("prepare_columns_only", "SELECT id, note FROM scan_t ORDER BY id")
        neither = prepare("prepare_neither", "DO 1")
        prepare("prepare_error", "SELECT * FROM no_such_table WHERE id = ?")
        record("execute_rows", COM_STMT_EXECUTE, execute_body(both, False, [10, 30]))
        record("execute_rows_again", COM_STMT_EXECUTE, execute_body(both, False, [100, 110]))
        record("execute_no_rows", COM_STMT_EXECUTE, execute_body(both, False, [10, 5]))
        record("execute_ok", COM_STMT_EXECUTE, execute_body(params_only, False, [8, 8]))
        record("execute_neither", COM_STMT_EXECUTE, execute_body(neither, False, []))
        record("execute_error", COM_STMT_EXECUTE, execute_body(999, False, []))
        record("execute_cursor", COM_STMT_EXECUTE, execute_body(columns_only, True, []), cursor=True)
        record("fetch_some", COM_STMT_FETCH, struct.pack("<II", columns_only, 150))
        record("fetch_rest", COM_STMT_FETCH, struct.pack("<II", columns_only, 1000))
        record("fetch_error", COM_STMT_FETCH, struct.pack("<II", 999, 10))
        record("execute_cursor_ok", COM_STMT_EXECUTE, execute_body(params_only, True, [9, 9]), cursor=True)
        record("stmt_reset", COM_STMT_RESET, struct.pack("<I", columns_only))
        call = prepare("prepare_call", "CALL scan_p()")
        record("execute_call", COM_STMT_EXECUTE, execute_body(call, False, []))
        for statement_id in (both, params_only, columns_only, neither, call):
            conn.send_packet(bytes([COM_STMT_CLOSE]) + struct.pack("<I", statement_id))

        infile_request, infile_prompt = conn.command(
            COM_QUERY, b"LOAD DATA LOCAL INFILE 'rows.csv' INTO TABLE scan_dup"
        )
        for seq, chunk in enumerate([b"20\t1\n21\t2\n", b"22\t3\n"], start=2):
            conn.send_packet(chunk, seq=seq)
        conn.send_packet(b"", seq=4)
        records.append(
            {
                "name": "local_infile",
                "deprecate_eof": deprecate_eof,
                "cache_metadata": cache_metadata,
                "command": COM_QUERY,
                "cursor": False,
                "request": infile_request.hex(),
                "response": (infile_prompt + conn.read_until_quiet()).hex(),
                "infile_prompt_end": len(infile_prompt),
            }
        )
        record("reset_connection", COM_RESET_CONNECTION)
        query("drop_procedure_again", "DROP PROCEDURE scan_p")
        query("drop_tables_again", "DROP TABLE scan_t, scan_dup")
        conn.sock.close()
    return records


def main(argv: list[str]) -> None:
    host, port, user, password, database = argv
    records = capture(host, int(port), user, password, database)
    target = Path(__file__).with_name("mariadb_responses.json")
    target.write_text(json.dumps(records, indent=1) + "\n")
    print(f"wrote {len(records)} responses to {target}")


if __name__ == "__main__":
    main(sys.argv[1:])
