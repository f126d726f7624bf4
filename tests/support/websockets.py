"""Reading a live-events WebSocket (service/events/) to its end, with websocket-client."""

from __future__ import annotations

import contextlib
import json
import struct
import time

import websocket

SESSION_ENDED = 4001
GOING_AWAY = 1001


def read_until_closed(ws, timeout):
    """(text messages as JSON, close code or None if dropped without a close
    frame, seconds it took). Pings are answered meanwhile."""
    started = time.monotonic()
    messages = []
    while True:
        ws.settimeout(max(0.01, started + timeout - time.monotonic()))
        try:
            opcode, frame = ws.recv_data_frame(control_frame=True)
        except (websocket.WebSocketConnectionClosedException, ConnectionError):
            return messages, None, time.monotonic() - started
        if opcode == websocket.ABNF.OPCODE_TEXT:
            messages.append(json.loads(frame.data))
        elif opcode == websocket.ABNF.OPCODE_CLOSE:
            code = struct.unpack("!H", frame.data[:2])[0] if len(frame.data) >= 2 else None
            with contextlib.suppress(Exception):
                ws.send_close()  # the closing handshake's answer
            ws.shutdown()
            return messages, code, time.monotonic() - started
