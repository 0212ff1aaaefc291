"""The Open Inference Protocol (KServe v2) over gRPC, for Triton and KServe clients."""

from mdn_serve._proto.inference import grpc_service_pb2
from mdn_serve.protocols.oip.service import PROTOCOL, OipServicer
from mdn_serve.protocols.rpc import ProtocolAdapter, ServiceBinding

ADAPTER = ProtocolAdapter(
    label=PROTOCOL,
    services=(ServiceBinding(grpc_service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"], OipServicer),),
)
