//! Node-wide admission and tokens: request slots held only on the wire with a fair share per
//! namespace, throttle windows scoped to who was throttled, bounded slot files, what a 401
//! evicts, `"system"` meaning system-assigned, workload-identity tokens bound to the pod.
