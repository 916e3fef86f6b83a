"""Makes one Execute call to a running pitboss host and reads its failure
the way any grpcio user does: grpc_status.rpc_status.from_call, then each
detail unpacked by its type. Prints what it read as one JSON object.

Usage: read_call_error.py ADDRESS POOL TOOL ARGS_JSON

The pitboss stubs are generated from host/proto with grpcio-tools into a
temporary folder, as a user of the published .proto would.
"""

import importlib.resources
import json
import pathlib
import sys
import tempfile

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from grpc_tools import protoc

ROOT = pathlib.Path(__file__).resolve().parents[2]


def pitboss_stubs():
    out = tempfile.mkdtemp()
    well_known = importlib.resources.files("grpc_tools") / "_proto"
    status = protoc.main([
        "protoc",
        f"-I{ROOT / 'host/proto'}",
        f"-I{well_known}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        "pitboss/v1/pitboss.proto",
    ])
    if status != 0:
        sys.exit(f"protoc failed on host/proto/pitboss/v1/pitboss.proto (status {status})")
    sys.path.insert(0, out)
    from pitboss.v1 import pitboss_pb2, pitboss_pb2_grpc

    return pitboss_pb2, pitboss_pb2_grpc


def main(address, pool, tool, args):
    pb, pb_grpc = pitboss_stubs()
    stub = pb_grpc.PitbossStub(grpc.insecure_channel(address))
    request = pb.ExecuteRequest(pool=pool, tool=tool, payload=args.encode())
    try:
        stub.Execute(request, timeout=30)
    except grpc.RpcError as call:
        status = rpc_status.from_call(call)
        read = {"code": call.code().name, "message_matches": status.message == call.details()}
        for detail in status.details:
            if detail.Is(pb.CallError.DESCRIPTOR):
                error = pb.CallError()
                detail.Unpack(error)
                read["call_error"] = {
                    "kind": error.kind,
                    "message": error.message,
                    "python_type": error.python_type,
                    "traceback": error.traceback,
                    "request_id": error.request_id,
                }
            elif detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                read["error_info"] = {"reason": info.reason, "domain": info.domain, "metadata": dict(info.metadata)}
            elif detail.Is(error_details_pb2.ResourceInfo.DESCRIPTOR):
                info = error_details_pb2.ResourceInfo()
                detail.Unpack(info)
                read["resource_info"] = {"type": info.resource_type, "name": info.resource_name, "owner": info.owner}
            elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                info = error_details_pb2.RetryInfo()
                detail.Unpack(info)
                read["retry_delay_ms"] = info.retry_delay.ToMilliseconds()
        print(json.dumps(read))
        return
    sys.exit("the call succeeded; expected a failure")


if __name__ == "__main__":
    main(*sys.argv[1:5])
