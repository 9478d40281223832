"""Generated protobuf and gRPC code for the gridwatt.v1 wire contract (see proto/)."""
