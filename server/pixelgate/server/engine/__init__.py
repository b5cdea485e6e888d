"""The generation engine: jobs and their events, the fair batching queue, a worker per device,
admission, ETA, step timing, the memory guard and the prompt denylist. No gRPC, no security, no
torch (device calls go through the models package).
"""
