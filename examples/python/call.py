#!/usr/bin/env python3
"""One side of a sotto call from Python, through the C ABI (ctypes, no other dependencies).

It joins a room on a signaling server, sends a sine tone that it produces itself through the
custom audio read callback (48 kHz mono f32), prints every event as one line, prints the
safety code, waits for the call to end after --duration seconds, prints the stats JSON and
exits 0 only if the call connected and ended cleanly.

    python3 call.py --lib target/debug/libsotto.so --server ws://127.0.0.1:8080/ws --room demo

The library is --lib, else $SOTTO_LIB, else target/debug/libsotto.so of this checkout.
"""

import argparse
import ctypes
import json
import math
import os
import sys
import threading

RATE = 48_000

SOTTO_OK = 0
SOTTO_ERR_BUFFER_TOO_SMALL = 3

EVENT_CB = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_char_p)
READ_CB = ctypes.CFUNCTYPE(ctypes.c_size_t, ctypes.c_void_p, ctypes.POINTER(ctypes.c_float),
                           ctypes.c_size_t)
WRITE_CB = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.POINTER(ctypes.c_float),
                            ctypes.c_size_t)


class AudioIo(ctypes.Structure):
    """`sotto_audio_io`."""

    _fields_ = [("read", READ_CB), ("write", WRITE_CB), ("user_data", ctypes.c_void_p)]


def load(path):
    """Opens the library and declares the functions used here."""
    lib = ctypes.CDLL(path)
    lib.sotto_last_error.restype = ctypes.c_char_p
    lib.sotto_last_error.argtypes = []
    lib.sotto_version.restype = ctypes.c_char_p
    lib.sotto_version.argtypes = []
    lib.sotto_call_start_with_audio.restype = ctypes.c_int32
    lib.sotto_call_start_with_audio.argtypes = [
        ctypes.c_char_p, ctypes.POINTER(AudioIo), EVENT_CB, ctypes.c_void_p,
        ctypes.POINTER(ctypes.c_void_p)]
    lib.sotto_call_wait.restype = ctypes.c_int32
    lib.sotto_call_wait.argtypes = [ctypes.c_void_p, ctypes.c_uint32]
    lib.sotto_call_hang_up.restype = ctypes.c_int32
    lib.sotto_call_hang_up.argtypes = [ctypes.c_void_p]
    lib.sotto_call_stats_json.restype = ctypes.c_int32
    lib.sotto_call_stats_json.argtypes = [
        ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_size_t)]
    lib.sotto_call_free.restype = None
    lib.sotto_call_free.argtypes = [ctypes.c_void_p]
    return lib


class Tone:
    """The read callback: a continuous sine, one frame per call."""

    def __init__(self, hz):
        self.step = 2 * math.pi * hz / RATE
        self.phase = 0.0

    def read(self, _user_data, frame, samples):
        values = [0.3 * math.sin(self.phase + i * self.step) for i in range(samples)]
        self.phase = math.fmod(self.phase + samples * self.step, 2 * math.pi)
        buf = (ctypes.c_float * samples)(*values)
        ctypes.memmove(frame, buf, ctypes.sizeof(buf))
        return samples  # never ends: the call ends by --duration


class Events:
    """What the event callback (a library thread) learns."""

    def __init__(self):
        self.lock = threading.Lock()
        self.connected = False
        self.safety_code = None
        self.ended_ok = None
        self.heard = 0

    def on_event(self, _user_data, event_json):
        text = event_json.decode("utf-8")
        print("event:", text, flush=True)
        event = json.loads(text)
        with self.lock:
            kind = event.get("event")
            if kind == "state" and event.get("state") == "connected":
                self.connected = True
            elif kind == "safety_code":
                self.safety_code = event["safety_code"]
                print("safety code:", self.safety_code, flush=True)
            elif kind == "ended":
                self.ended_ok = event.get("ok") is True

    def write(self, _user_data, _frame, samples):
        with self.lock:
            self.heard += samples


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lib", default=os.environ.get("SOTTO_LIB"))
    parser.add_argument("--server", required=True)
    parser.add_argument("--room", required=True)
    parser.add_argument("--name", default="python-example")
    parser.add_argument("--identity")
    parser.add_argument("--bind")
    parser.add_argument("--tone", type=float, default=440.0)
    parser.add_argument("--duration", type=float, default=5.0)
    args = parser.parse_args()
    lib_path = args.lib or os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "..", "..", "target", "debug", "libsotto.so")
    lib = load(lib_path)

    config = {"server": args.server, "room": args.room, "name": args.name,
              "duration": args.duration}
    if args.identity:
        config["identity"] = args.identity
    if args.bind:
        config["bind"] = args.bind
    config_json = json.dumps(config)
    print(f"libsotto {lib.sotto_version().decode()}; config {config_json}", flush=True)

    events = Events()
    tone = Tone(args.tone)
    # The callbacks must stay referenced until sotto_call_free returns.
    on_event = EVENT_CB(events.on_event)
    io = AudioIo(READ_CB(tone.read), WRITE_CB(events.write), None)
    call = ctypes.c_void_p()
    rc = lib.sotto_call_start_with_audio(config_json.encode(), ctypes.byref(io), on_event, None,
                                         ctypes.byref(call))
    if rc != SOTTO_OK:
        print(f"sotto_call_start_with_audio: status {rc}: {lib.sotto_last_error().decode()}",
              file=sys.stderr)
        return 1

    ok = True
    # ctypes releases the GIL during the wait, so the callbacks run meanwhile.
    rc = lib.sotto_call_wait(call, int(args.duration * 1000) + 60_000)
    if rc != SOTTO_OK:
        print(f"sotto_call_wait: status {rc}: {lib.sotto_last_error().decode()}",
              file=sys.stderr)
        lib.sotto_call_hang_up(call)
        ok = False

    # Ask for the size first (a 1-byte buffer is always too small), then fetch.
    needed = ctypes.c_size_t(0)
    buf = ctypes.create_string_buffer(1)
    rc = lib.sotto_call_stats_json(call, buf, len(buf), ctypes.byref(needed))
    if rc == SOTTO_ERR_BUFFER_TOO_SMALL:
        buf = ctypes.create_string_buffer(needed.value + 1)
        rc = lib.sotto_call_stats_json(call, buf, len(buf), ctypes.byref(needed))
    if rc == SOTTO_OK:
        print("stats:", buf.value.decode(), flush=True)
    else:
        print(f"sotto_call_stats_json: status {rc}: {lib.sotto_last_error().decode()}",
              file=sys.stderr)
        ok = False
    lib.sotto_call_free(call)

    with events.lock:
        print(f"heard {events.heard} samples from the peer")
        if not (events.connected and events.safety_code):
            print("the call never connected", file=sys.stderr)
            ok = False
        if not events.ended_ok:
            print("the call did not end cleanly", file=sys.stderr)
            ok = False
    print(f"exit {0 if ok else 1}", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
