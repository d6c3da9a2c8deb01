#!/usr/bin/env python3
"""Uses Kho's gRPC API from Python with stock tooling (grpcio + grpcio-tools).

Generates the client code from proto/ into a temporary directory, then, against the node
given as the first argument (host:port): creates a tenant and a table, writes and reads a
row, writes key-value pairs and scans them. Exits non-zero on any mismatch.

    python3 -m pip install grpcio grpcio-tools
    python3 clients/python/example.py 127.0.0.1:7101

With KHO_CA set (and KHO_CERT, KHO_KEY: the `export` line `kho demo` prints) it connects
with TLS through grpc.ssl_channel_credentials; without it, in plaintext. With KHO_TOKEN
set (a token from `kho token create`) it sends it as `authorization: Bearer …` with every
call (grpc.access_token_call_credentials) and, being no cluster admin, does not create the
tenant: the token's principal needs an admin, read and write grant on it.

    python3 clients/python/example.py 127.0.0.1:7101 TENANT [OTHER_TENANT]

With OTHER_TENANT, a read of that tenant must be refused (PERMISSION_DENIED). With
KHO_SESSION_PURPOSE set too, the principal holds a grant on OTHER_TENANT's `people` table,
family `identity`, that requires an access session: the example opens one for that
purpose, reads the row in it (the session's id as `kho-session` metadata) and sees only
the identity cells, then closes it.
"""
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def generate(out):
    protos = ["kho/v1/data.proto", "kho/v1/admin.proto"]
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", "-I", os.path.join(ROOT, "proto"),
         f"--python_out={out}", f"--grpc_python_out={out}"] + protos,
        check=True,
    )
    sys.path.insert(0, out)


def open_channel(endpoint):
    """TLS when KHO_CA names the cluster's CA (with a client certificate when KHO_CERT and
    KHO_KEY are set, as `kho demo` prints them); plaintext otherwise."""
    import grpc

    ca = os.environ.get("KHO_CA")
    if not ca:
        return grpc.insecure_channel(endpoint)

    def read(name):
        path = os.environ.get(name)
        if not path:
            return None
        with open(path, "rb") as f:
            return f.read()

    creds = grpc.ssl_channel_credentials(
        root_certificates=read("KHO_CA"), private_key=read("KHO_KEY"), certificate_chain=read("KHO_CERT"))
    token = os.environ.get("KHO_TOKEN")
    if token:
        creds = grpc.composite_channel_credentials(creds, grpc.access_token_call_credentials(token))
    return grpc.secure_channel(endpoint, creds)


def main():
    endpoint = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:7101"
    tenant = sys.argv[2] if len(sys.argv) > 2 else "python_example"
    other = sys.argv[3] if len(sys.argv) > 3 else None
    by_token = bool(os.environ.get("KHO_TOKEN"))
    with tempfile.TemporaryDirectory() as out:
        generate(out)
        import grpc
        from kho.v1 import admin_pb2, admin_pb2_grpc, data_pb2, data_pb2_grpc

        channel = open_channel(endpoint)
        admin = admin_pb2_grpc.AdminStub(channel)
        data = data_pb2_grpc.DataStub(channel)
        timeout = 20

        calls = [] if by_token else [(admin.CreateTenant, admin_pb2.CreateTenantRequest(name=tenant))]
        for call, req in calls + [
            (admin.CreateTable, admin_pb2.CreateTableRequest(
                tenant=tenant, name="people",
                families=[admin_pb2.ColumnFamily(name="identity"), admin_pb2.ColumnFamily(name="residence")])),
        ]:
            try:
                call(req, timeout=timeout)
            except grpc.RpcError as e:
                if e.code() != grpc.StatusCode.ALREADY_EXISTS:
                    raise

        row = "001099012345".encode()
        data.MutateRow(data_pb2.MutateRowRequest(
            tenant=tenant, table="people", row_key=row,
            mutations=[
                data_pb2.Mutation(set_cell=data_pb2.SetCell(family="identity", qualifier=b"ho_ten", value="Nguyễn Văn An".encode())),
                data_pb2.Mutation(set_cell=data_pb2.SetCell(family="residence", qualifier=b"tinh", value="Hà Nội".encode())),
            ]), timeout=timeout)
        got = data.ReadRow(data_pb2.ReadRowRequest(tenant=tenant, table="people", row_key=row), timeout=timeout)
        cells = {(c.family, c.qualifier): c.value.decode() for c in got.row.cells}
        assert got.found and cells == {("identity", b"ho_ten"): "Nguyễn Văn An", ("residence", b"tinh"): "Hà Nội"}, cells

        for i in range(5):
            data.Put(data_pb2.PutRequest(tenant=tenant, table="people", key=f"k{i}".encode(), value=f"v{i}".encode()), timeout=timeout)
        kvs = [kv for chunk in data.Scan(data_pb2.ScanRequest(tenant=tenant, table="people", prefix=b"k", limit=10), timeout=timeout)
               for kv in chunk.kvs]
        assert [(kv.key, kv.value) for kv in kvs] == [(f"k{i}".encode(), f"v{i}".encode()) for i in range(5)], kvs

        try:
            data.Get(data_pb2.GetRequest(tenant=tenant, table="missing", key=b"x"), timeout=timeout)
            raise AssertionError("reading an unknown table succeeded")
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.NOT_FOUND, e

        if other:
            try:
                data.ReadRow(data_pb2.ReadRowRequest(tenant=other, table="people", row_key=row), timeout=timeout)
                raise AssertionError(f"reading tenant {other} succeeded")
            except grpc.RpcError as e:
                assert e.code() == grpc.StatusCode.PERMISSION_DENIED, e
                print(f"python client: a read of tenant {other} was refused: {e.details()}")
            purpose = os.environ.get("KHO_SESSION_PURPOSE")
            if purpose:
                session = admin.OpenAccessSession(admin_pb2.OpenAccessSessionRequest(
                    tenant=other, table="people", family="identity", purpose=purpose, duration_ms=60_000), timeout=timeout).session
                in_session = (("kho-session", session.session_id),)
                got = data.ReadRow(data_pb2.ReadRowRequest(tenant=other, table="people", row_key=row),
                                   metadata=in_session, timeout=timeout)
                fams = sorted({c.family for c in got.row.cells})
                assert got.found and fams == ["identity"] and got.row.cells_withheld, got
                admin.CloseAccessSession(admin_pb2.CloseAccessSessionRequest(session_id=session.session_id), timeout=timeout)
                # A close holds on every node within 5 s (GRANTS_STALE_MAX_MS): the node
                # answering may apply it a moment after the leader did.
                deadline = time.monotonic() + 6
                while True:
                    try:
                        data.ReadRow(data_pb2.ReadRowRequest(tenant=other, table="people", row_key=row),
                                     metadata=in_session, timeout=timeout)
                    except grpc.RpcError as e:
                        assert e.code() == grpc.StatusCode.PERMISSION_DENIED, e
                        break
                    if time.monotonic() > deadline:
                        raise AssertionError("a read in a closed session still succeeded after 6 s")
                    time.sleep(0.05)
                print(f"python client: in access session {session.session_id} of tenant {other}: {fams} cells, "
                      f"cells withheld; refused once closed")

        who = admin.WhoAmI(admin_pb2.WhoAmIRequest(), timeout=timeout)
        print(f"python client: table created, row written and read, {len(kvs)} keys scanned via {endpoint} as {who.principal} ({who.authenticated_by})")


if __name__ == "__main__":
    main()
