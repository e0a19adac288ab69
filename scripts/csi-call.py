#!/usr/bin/env python3
"""A CSI call over a unix socket with grpcio, for the image test
(scripts/image-test.sh): the protobuf messages are encoded by hand (a few
fields of csi.proto), so only grpcio is needed.

  csi-call.py SOCKET create NAME BYTES    -> the volume id, then volume.K=V lines (volume context)
  csi-call.py SOCKET node-info            -> the node id
  csi-call.py SOCKET publish VOLUME NODE  -> publish.K=V lines (publish context)
  csi-call.py SOCKET stage VOLUME STAGING FSTYPE [volume.K=V | publish.K=V]...
Exits non-zero with the gRPC status on failure.
"""
import sys

import grpc


def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def field(num, value):
    if isinstance(value, int):
        return varint(num << 3) + varint(value)
    if isinstance(value, str):
        value = value.encode()
    return varint(num << 3 | 2) + varint(len(value)) + value


def fields(data):
    """(number, value) pairs of a message; values of wire type 2 as bytes."""
    i = 0
    while i < len(data):
        key, i = read_varint(data, i)
        num, wire = key >> 3, key & 7
        if wire == 0:
            value, i = read_varint(data, i)
        elif wire == 2:
            length, i = read_varint(data, i)
            value, i = data[i:i + length], i + length
        elif wire == 1:
            value, i = data[i:i + 8], i + 8
        elif wire == 5:
            value, i = data[i:i + 4], i + 4
        else:
            raise ValueError(f"wire type {wire}")
        yield num, value


def read_varint(data, i):
    shift = result = 0
    while True:
        b = data[i]
        i += 1
        result |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return result, i


def capability(fs_type):
    # VolumeCapability{mount: MountVolume{fs_type}, access_mode: {SINGLE_NODE_WRITER}}
    return field(2, field(1, fs_type)) + field(3, field(1, 1))


def call(socket, method, request):
    channel = grpc.insecure_channel(f"unix://{socket}")
    stub = channel.unary_unary(method, request_serializer=None, response_deserializer=None)
    try:
        return stub(request, timeout=60)
    except grpc.RpcError as e:
        sys.exit(f"{method}: {e.code().name}: {e.details()}")


def main():
    socket, verb, args = sys.argv[1], sys.argv[2], sys.argv[3:]
    if verb == "create":
        name, size = args
        req = field(1, name) + field(2, field(1, int(size))) + field(3, capability("ext4"))
        resp = call(socket, "/csi.v1.Controller/CreateVolume", req)
        volume = list(fields(dict(fields(resp))[1]))
        print(dict(volume)[2].decode())
        for num, entry in volume:
            if num == 3:
                kv = dict(fields(entry))
                print(f"volume.{kv[1].decode()}={kv[2].decode()}")
    elif verb == "node-info":
        resp = call(socket, "/csi.v1.Node/NodeGetInfo", b"")
        print(dict(fields(resp))[1].decode())
    elif verb == "publish":
        volume, node = args
        req = field(1, volume) + field(2, node) + field(3, capability("ext4"))
        resp = call(socket, "/csi.v1.Controller/ControllerPublishVolume", req)
        for num, entry in fields(resp):
            if num == 1:
                kv = dict(fields(entry))
                print(f"publish.{kv[1].decode()}={kv[2].decode()}")
    elif verb == "stage":
        volume, staging, fs_type, *context = args
        req = field(1, volume) + field(3, staging) + field(4, capability(fs_type))
        for entry in context:
            kind, kv = entry.split(".", 1)
            k, v = kv.split("=", 1)
            req += field({"publish": 2, "volume": 6}[kind], field(1, k) + field(2, v))
        call(socket, "/csi.v1.Node/NodeStageVolume", req)
    else:
        sys.exit(f"unknown call {verb}")


if __name__ == "__main__":
    main()
