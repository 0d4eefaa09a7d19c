# install_models.cmake: the part of `cmake --install` that makes the tiny models of docs/DEPLOY.md with the kvwire
# just built (the same commands and seeds as tests/daemons/make_models.sh): tiny-qwen3 (seed 1), tiny-qwen2 (seed 2)
# and the tiny fuser between them (seed 3), in KW_MODELS_DIR (relative to the install prefix unless absolute, under
# DESTDIR). The installed sharerd.yaml and receiverd.yaml read them there. deploy/CMakeLists.txt sets KW_KVWIRE,
# KW_TOKENIZER and KW_MODELS_DIR before it. The generators are deterministic: installing again writes the same files.
if(IS_ABSOLUTE "${KW_MODELS_DIR}")
    set(kw_models "$ENV{DESTDIR}${KW_MODELS_DIR}")
else()
    set(kw_models "$ENV{DESTDIR}${CMAKE_INSTALL_PREFIX}/${KW_MODELS_DIR}")
endif()

# kw_install_model NAME ARGS...: kvwire ARGS --out <models>/NAME, its files added to install_manifest.txt
function(kw_install_model name)
    message(STATUS "Installing: ${kw_models}/${name} (kvwire ${ARGV1})")
    execute_process(COMMAND "${KW_KVWIRE}" ${ARGN} --out "${kw_models}/${name}" RESULT_VARIABLE rc OUTPUT_QUIET
                    ERROR_VARIABLE err)
    if(NOT rc EQUAL 0)
        message(FATAL_ERROR "kvwire ${ARGV1} could not make ${kw_models}/${name} (exit ${rc}): ${err}")
    endif()
    # readable by the units' throwaway user whatever the installing umask
    file(CHMOD_RECURSE "${kw_models}/${name}" FILE_PERMISSIONS OWNER_READ OWNER_WRITE GROUP_READ WORLD_READ
         DIRECTORY_PERMISSIONS OWNER_READ OWNER_WRITE OWNER_EXECUTE GROUP_READ GROUP_EXECUTE WORLD_READ WORLD_EXECUTE)
    file(GLOB_RECURSE files "${kw_models}/${name}/*")
    set(CMAKE_INSTALL_MANIFEST_FILES ${CMAKE_INSTALL_MANIFEST_FILES} ${files} PARENT_SCOPE)
endfunction()

file(MAKE_DIRECTORY "${kw_models}")
kw_install_model(tiny-qwen3 gen-model --arch qwen3 --preset tiny --tied 0 --seed 1 --tokenizer "${KW_TOKENIZER}")
kw_install_model(tiny-qwen2 gen-model --arch qwen2 --preset tiny --tied 0 --seed 2 --tokenizer "${KW_TOKENIZER}")
kw_install_model(tiny-fuser gen-fuser --receiver "${kw_models}/tiny-qwen3" --sharer "${kw_models}/tiny-qwen2" --seed 3
                 --hidden 64 --intermediate 64)
