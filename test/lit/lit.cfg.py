# -*- Python -*-
# lit configuration of mtc's FileCheck tests.
import os

import lit.formats
from lit.llvm import llvm_config

config.name = "mtc"
config.test_format = lit.formats.ShTest(not llvm_config.use_lit_shell)
config.suffixes = [".mlir", ".test", ".json"]
config.excludes = ["Inputs", "CMakeLists.txt", "lit.cfg.py", "lit.site.cfg.py"]
config.test_source_root = os.path.dirname(__file__)
config.test_exec_root = os.path.join(config.mtc_obj_root, "test", "lit")

config.substitutions.append(("%examples", os.path.join(config.mtc_src_root, "examples")))
config.substitutions.append(("%plugin_dir", config.mtc_lib_dir))
config.substitutions.append(("%mtc_src", config.mtc_src_root))
config.substitutions.append(("%mtc-preprocess", config.mtc_preprocess))

llvm_config.use_default_substitutions()
llvm_config.with_environment("PATH", config.mtc_tools_dir, append_path=True)
llvm_config.with_environment("PATH", config.llvm_tools_dir, append_path=True)
tools = ["mtc-opt", "mtc", "FileCheck", "not", "count"]
llvm_config.add_tool_substitutions(tools, [config.mtc_tools_dir, config.llvm_tools_dir])
