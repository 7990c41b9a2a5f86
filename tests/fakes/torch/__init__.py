"""FAKE torch: only cuda.get_device_capability, answering an Orin's sm_87."""


class cuda:  # noqa: N801 (the real name)
    @staticmethod
    def get_device_capability():
        return (8, 7)
