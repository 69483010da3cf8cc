"""The operator API (admin token): tenants, quotas, policies, sequences, watermarks, status."""

import os

from kvkeep._proto import admin_pb2, admin_pb2_grpc
from kvkeep.client import _policy
from kvkeep.connection import Connection


def read_token(path):
    """A token file's content, stripped (e.g. <data_dir>/admin.token)."""
    with open(path, encoding="utf-8") as f:
        return f.read().strip()


class Admin(Connection):
    """Admin(target, admin_token). Every method raises a KvkeepError subclass on failure."""

    _stub_class = admin_pb2_grpc.AdminStub

    @classmethod
    def from_data_dir(cls, data_dir="./kvkeep-data", **kwargs):
        """The daemon of `data_dir`: its socket and its admin.token."""
        return cls("unix:" + os.path.abspath(os.path.join(data_dir, "kvkeepd.sock")),
                   read_token(os.path.join(data_dir, "admin.token")), **kwargs)

    def status(self):
        """DaemonStatus: pool, tenants, sessions, sequences, spill counters."""
        return self._unary(self._stub.GetStatus, admin_pb2.GetStatusRequest())

    def create_tenant(self, name, quota_bytes=0, max_bytes=0, weight=0, token="",
                      spill_quota_bytes=0, sharing_group=""):
        """Creates a tenant; returns the CreateTenantReply (`.token` is shown only here,
        `.tenant` the TenantInfo)."""
        return self._unary(self._stub.CreateTenant, admin_pb2.CreateTenantRequest(
            name=name, quota_bytes=quota_bytes, max_bytes=max_bytes, weight=weight, token=token,
            spill_quota_bytes=spill_quota_bytes, sharing_group=sharing_group))

    def list_tenants(self):
        """Every tenant (TenantInfo) with its usage, sorted by name."""
        return list(self._unary(self._stub.ListTenants, admin_pb2.ListTenantsRequest()).tenants)

    list = list_tenants

    def delete_tenant(self, name, force=False):
        return self._unary(self._stub.DeleteTenant,
                          admin_pb2.DeleteTenantRequest(name=name, force=force))

    def set_quota(self, name, quota_bytes=None, max_bytes=None, weight=None,
                  spill_quota_bytes=None):
        """Changes the fields given; returns the TenantInfo."""
        fields = dict(quota_bytes=quota_bytes, max_bytes=max_bytes, weight=weight,
                      spill_quota_bytes=spill_quota_bytes)
        return self._unary(self._stub.SetQuota, admin_pb2.SetQuotaRequest(
            name=name, **{k: v for k, v in fields.items() if v is not None}))

    def set_policy(self, tenant, policy=None, **fields):
        """Replaces the tenant's default policy: a Policy message, or its fields as keywords
        (scorer, allocation, keep_ratio | max_tokens, sinks, window, pool_kernel, ada_alpha,
        seed). Returns the Policy stored."""
        if policy is None:
            policy = _policy(**fields)
        return self._unary(self._stub.SetPolicy,
                          admin_pb2.SetPolicyRequest(tenant=tenant, policy=policy))

    def get_policy(self, tenant):
        return self._unary(self._stub.GetPolicy, admin_pb2.GetPolicyRequest(tenant=tenant))

    def list_sequences(self, tenant=""):
        """SequenceInfo of one tenant's sequences (or every tenant's)."""
        return list(self._unary(self._stub.ListSequences,
                               admin_pb2.ListSequencesRequest(tenant=tenant)).sequences)

    def get_sequence(self, tenant, sequence_id):
        """SequenceDetail of one sequence (heads, holders, policy, statistics held)."""
        return self._unary(self._stub.GetSequence,
                           admin_pb2.SequenceRef(tenant=tenant, sequence_id=sequence_id))

    def spill_sequence(self, tenant, sequence_id):
        return self._unary(self._stub.SpillSequence,
                          admin_pb2.SequenceRef(tenant=tenant, sequence_id=sequence_id))

    def restore_sequence(self, tenant, sequence_id):
        return self._unary(self._stub.RestoreSequence,
                          admin_pb2.SequenceRef(tenant=tenant, sequence_id=sequence_id))

    def drop_sequence(self, tenant, sequence_id, force=False):
        return self._unary(self._stub.DropSequence, admin_pb2.SequenceRef(
            tenant=tenant, sequence_id=sequence_id, force=force))

    def set_watermarks(self, low_free, high_free):
        return self._unary(self._stub.SetWatermarks,
                          admin_pb2.Watermarks(low_free=low_free, high_free=high_free))
