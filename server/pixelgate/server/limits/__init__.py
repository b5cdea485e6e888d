"""How much a caller may ask: token buckets (in memory or Redis), the chain's rate-limit guards,
GPU quota, per-caller policy, quota metadata.
"""
