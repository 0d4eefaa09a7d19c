# tests/c2c/fusion.cmake: the C2C compute path (projector forward, fusion pipeline, transfer hook, kvwire c2c),
# included from tests/c2c/CMakeLists.txt. Fixtures: tests/data/c2c/fusion (tools/make_c2c_fixtures.py).
kw_test(NAME test_c2c_projector SOURCES test_projector.c ../model/model_fixture.c LIBS kw_c2c kw_model kw_kernels
        LABELS c2c golden)
kw_test(NAME test_c2c_fusion SOURCES test_fusion.c ../model/model_fixture.c LIBS kw_c2c kw_model kw_kernels
        LABELS c2c golden)
kw_script_test(NAME test_c2c_cli_c2c SCRIPT ${CMAKE_CURRENT_SOURCE_DIR}/cli_c2c.sh LABELS cli c2c)
kw_test(NAME test_c2c_projector_bf16 SOURCES test_projector_bf16.c ../model/model_fixture.c LIBS kw_c2c kw_model kw_kernels LABELS c2c golden)
kw_script_test(NAME test_c2c_cli_rmsnorm SCRIPT ${CMAKE_CURRENT_SOURCE_DIR}/cli_c2c_rmsnorm.sh LABELS cli c2c)
# The receiver-aware selection scores (c2c/kw_rscore.h) against a direct composition on the fusion fixtures.
kw_script_test(NAME test_c2c_cli_rscore SCRIPT ${CMAKE_CURRENT_SOURCE_DIR}/cli_c2c_rscore.sh LABELS cli c2c)
# scoring: receiver in process: the preview, the receiver's selection and the final blob against scoring local.
kw_script_test(NAME test_c2c_cli_rscore_receiver SCRIPT ${CMAKE_CURRENT_SOURCE_DIR}/cli_c2c_rscore_receiver.sh
               LABELS cli c2c)
kw_test(NAME test_c2c_rselect SOURCES test_rselect.c LIBS kw_c2c LABELS unit c2c)
kw_test(NAME test_c2c_rscore SOURCES test_rscore.c ../model/model_fixture.c LIBS kw_c2c kw_sharer kw_receiver kw_model
        kw_kernels LABELS c2c)
