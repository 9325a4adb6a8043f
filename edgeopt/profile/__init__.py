"""The device-aware profiler: counting, activation memory, roofline latency and energy, measurement.

    from edgeopt.profile import profile_model, measure_latency
    prof = profile_model(model, load_device("myriadx"), {"input": [1, 3, 224, 224]})
    prof.totals["est_latency_ms"], prof.layers[0]["bound"]
"""

from edgeopt.profile.measure import make_session, measure_latency, random_feeds
from edgeopt.profile.profiler import CONTRACT_LAYER, CONTRACT_TOTALS, Profile, profile_model, profile_on_devices

__all__ = ["profile_model", "profile_on_devices", "measure_latency", "make_session", "random_feeds", "Profile", "CONTRACT_TOTALS",
           "CONTRACT_LAYER"]
