"""The fleet's load balancer: an HAProxy 2.6 configuration generated from the fleet and its profiles
(``haproxy_config``), the haproxy process and its runtime API (``runtime``: weights and server states changed
without a reload).

What the generated ``haproxy.cfg`` does (:func:`render_config`):

* one ``frontend`` bound to ``127.0.0.1:<port>`` (HTTP mode) that forwards **only** the inference and health
  routes of Triton's KServe v2 HTTP API (:data:`ALLOWED_ROUTES`): ``POST /v2/models/<m>[/versions/<v>]/infer``,
  ``GET /v2/health/ready|live`` and the read-only model metadata, readiness and config
  ``GET /v2/models/<m>[/versions/<v>][/ready|/config]`` (perf_analyzer, Model Analyzer and the client SDK read the
  config first). Every other request (model control ``/v2/repository/...``, ``/stats``, ``/v2/logging``,
  ``/v2/trace``, shared memory, server metadata ``/v2``) is answered 403 by HAProxy and never reaches a node.
  Given the served model's limits (``admission``, from its config.pbtxt), inference requests that cannot be
  valid for it are answered 400/413 there too (what is checked where: recforge.serving.loadbalancer.admission).
  Model loading and unloading go to one node's own port (``recforge.serving.fleet``), never through the
  balancer; Triton's metrics port is never behind it.
* one ``backend triton``: ``balance roundrobin`` (weighted, changeable at run time; ``leastconn`` is a setting:
  it follows the weights only under concurrency — among idle nodes it alternates, so at the few concurrent
  requests of a fast model a 10 % canary weight got ~40 % of the requests in the rollout test, which is why
  weighted round robin is the default); one ``server`` line per node whose ``weight`` is proportional to
  the node's measured capacity (:func:`capacity_weights`); active health checks ``GET /v2/health/ready`` expecting
  200 every ``check_inter_ms`` (``fall``/``rise`` consecutive results flip a node DOWN/UP; a connection error seen
  on live traffic switches that node's checks to ``fastinter``, ``observe layer4``: it does not mark it DOWN by
  itself, since one refused connection on the last healthy node would take the whole fleet out); ``retries 2``
  with ``retry-on conn-failure 503`` and ``option redispatch 1``: a request that never ran on a node (connection
  refused or not established: the node is already down; or answered 503: Triton refused it before running it,
  its queue full at ``max_queue_size`` or the model unavailable) is sent to another node. A request whose attempt ended
  with the node resetting or closing without an answer, or timing out, is **not** sent again: it may be what
  killed the node (a poison request: before, one malformed request killed a node, was redispatched and killed the
  next). The price: the requests in flight on a node that dies are lost (at most one per client connection;
  they were all re-sent before). On a reused client connection HAProxy then closes without an answer rather
  than a 502 (HTTP's signal that the client may retry; the choice is the client's).
* every request is logged on one line with its node, termination state and body SHA-256 (``requestlog``); the
  fleet's supervisor reads it to record what was on a node that failed and to quarantine a body that crashed nodes
  (``acl ... -f quarantine.lst``: 422). A node marked DOWN has its sessions killed (``on-marked-down
  shutdown-sessions``). ``HAProxy.reload()`` reloads the config without dropping a connection (server states and
  weights kept through ``server-state-file``; ``option idle-close-on-response``).
* every answer carries ``X-RecForge-Node: <server name>`` (``http-response set-header``): the load generator
  attributes each request to the node that served it, so the rollout's canary gate compares the canary's queries
  with the others' under the same load (:func:`recforge.serving.rollout.gate.gate`). The node names are the
  fleet's own labels (node0, node1, ...), nothing about the host.
* load shedding (``shedding``): the share of inference requests answered ``503`` + ``Retry-After`` by HAProxy
  itself (a server-less ``backend shed``, whose ``stot`` counts them), held per mille in ``shed.map`` next to the
  admin socket and set at run time by the elastic controller (:meth:`HAProxy.set_shed_fraction`: ``set map``, no
  reload); 0 (nothing shed) in a new config and after a fresh start. Health and metadata requests are never shed.
* the admin runtime API on a unix socket in the state folder (``stats socket ... mode 600 level admin``), no TCP
  stats page. ``show stat`` / ``show servers state`` there are parsed by :meth:`HAProxy.servers` and
  :meth:`HAProxy.server_state`.

Weights (:func:`capacity_weights`): HAProxy weights are integers 1..256 (0 would take a node out of rotation). A node
gets ``round(256 * c / c_max)`` clipped to [1, 256], where ``c`` is the latency-bounded throughput (qps) in the
profile of the node's hardware target and ``c_max`` the largest among the nodes; so the fastest node weighs 256 and
the ratios are kept to within 1/512 of the fastest node's capacity. A node with an explicit ``weight`` keeps it. If
no node has a profile, all weigh the same (100). Mixing profiled and unprofiled nodes is refused: there is no
capacity to compare with. The generated file starts with a comment giving each weight's source.

The process (:class:`HAProxy`) runs ``haproxy -W -db -f haproxy.cfg`` in the foreground as our child (master-worker
mode, no daemon), after ``haproxy -c`` has validated the file; ``stop()`` ends it. Runtime changes
(``set server triton/<node> weight N``, ``... state ready|drain|maint``) go through the socket and keep the worker
(its pid does not change).
"""

from recforge.serving.loadbalancer.admission import (
    AdmissionLimits,
    InputLimit,
    common_limits,
    limits_from_model_config,
    read_limits,
)
from recforge.serving.loadbalancer.haproxy_config import (
    ALLOWED_ROUTES,
    BACKEND,
    EQUAL_WEIGHT,
    FRONTEND,
    MAX_WEIGHT,
    BackendNode,
    BalancerSettings,
    NodeWeight,
    admin_socket_path,
    capacity_weights,
    check_config,
    haproxy_binary,
    profiles_by_target,
    render_config,
    write_config,
)
from recforge.serving.loadbalancer.runtime import (
    BalancerError,
    HAProxy,
    parse_servers_state,
    parse_show_stat,
    runtime_command,
    server_status,
    shed_requests,
)
from recforge.serving.loadbalancer.shedding import SHED_BACKEND, shed_map_path

__all__ = [
    "ALLOWED_ROUTES", "AdmissionLimits", "InputLimit", "common_limits", "limits_from_model_config", "read_limits",
    "BACKEND", "EQUAL_WEIGHT", "FRONTEND", "MAX_WEIGHT", "BackendNode", "BalancerError",
    "BalancerSettings", "HAProxy", "NodeWeight", "admin_socket_path", "capacity_weights", "check_config",
    "haproxy_binary",
    "parse_servers_state", "parse_show_stat", "profiles_by_target", "render_config", "runtime_command",
    "server_status", "write_config", "SHED_BACKEND", "shed_map_path", "shed_requests",
]
